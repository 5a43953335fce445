//! What a model request costs: the service's price table (built-in prices of current Claude models,
//! the `pricing` section over them), never the CLI's own estimate. A model is priced by the entry
//! that is the longest prefix of its name (`claude-sonnet-4` prices `claude-sonnet-4-5-20250929`),
//! else by the fallback.

use std::collections::BTreeMap;

use crate::config::{ModelPrice, PricingConfig};
use crate::domain::{Nanos, TurnUsage};

/// Built-in prices, USD per million input and output tokens (cache reads a tenth of input, cache
/// writes 1.25 times), by model-name prefix.
const BUILT_IN: &[(&str, f64, f64)] = &[
    ("claude-opus-4-5", 5.0, 25.0),
    ("claude-opus-4-6", 5.0, 25.0),
    ("claude-opus-4", 15.0, 75.0),
    ("claude-sonnet-4", 3.0, 15.0),
    ("claude-haiku-4", 1.0, 5.0),
    ("claude-3-opus", 15.0, 75.0),
    ("claude-3-7-sonnet", 3.0, 15.0),
    ("claude-3-5-sonnet", 3.0, 15.0),
    ("claude-3-5-haiku", 0.8, 4.0),
    ("claude-3-haiku", 0.25, 1.25),
];

/// One model's prices in nano-dollars per token.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PerToken {
    input: f64,
    output: f64,
    cache_read: f64,
    cache_write: f64,
}

impl From<ModelPrice> for PerToken {
    fn from(price: ModelPrice) -> Self {
        // USD per million tokens is nano-dollars per thousandth of a token: times 1000 per token.
        PerToken {
            input: price.input * 1000.0,
            output: price.output * 1000.0,
            cache_read: price.cache_read.unwrap_or(price.input / 10.0) * 1000.0,
            cache_write: price.cache_write.unwrap_or(price.input * 1.25) * 1000.0,
        }
    }
}

/// The price table the relay costs requests with.
#[derive(Debug, Clone)]
pub struct PriceTable {
    by_prefix: BTreeMap<String, PerToken>,
    fallback: PerToken,
}

impl PriceTable {
    /// The built-in prices with `config`'s over them.
    pub fn new(config: &PricingConfig) -> PriceTable {
        let mut by_prefix: BTreeMap<String, PerToken> = BUILT_IN
            .iter()
            .map(|(model, input, output)| (model.to_string(), ModelPrice::of(*input, *output).into()))
            .collect();
        for (model, price) in &config.models {
            by_prefix.insert(model.clone(), (*price).into());
        }
        PriceTable {
            by_prefix,
            fallback: config.fallback.into(),
        }
    }

    /// Whether a built-in or configured entry prices `model` (else the fallback does).
    pub fn knows(&self, model: &str) -> bool {
        self.entry(model).is_some()
    }

    fn entry(&self, model: &str) -> Option<&PerToken> {
        // The longest matching prefix.
        self.by_prefix
            .iter()
            .filter(|(prefix, _)| model.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, price)| price)
    }

    /// What `usage` of `model` costs (the fallback's price for an unknown or unnamed model).
    pub fn cost(&self, model: Option<&str>, usage: &TurnUsage) -> Nanos {
        let price = model.and_then(|m| self.entry(m)).unwrap_or(&self.fallback);
        let nanos = usage.input_tokens as f64 * price.input
            + usage.output_tokens as f64 * price.output
            + usage.cache_read_input_tokens as f64 * price.cache_read
            + usage.cache_creation_input_tokens as f64 * price.cache_write;
        nanos.round().max(0.0) as Nanos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64, cache_read: u64, cache_write: u64) -> TurnUsage {
        TurnUsage {
            input_tokens: input,
            output_tokens: output,
            cache_read_input_tokens: cache_read,
            cache_creation_input_tokens: cache_write,
        }
    }

    #[test]
    fn the_longest_prefix_prices_a_model() {
        let table = PriceTable::new(&PricingConfig::default());
        let million = usage(1_000_000, 0, 0, 0);
        // claude-opus-4-5 is cheaper than the claude-opus-4 prefix it also starts with.
        assert_eq!(
            table.cost(Some("claude-opus-4-5-20251101"), &million),
            5_000_000_000
        );
        assert_eq!(
            table.cost(Some("claude-opus-4-1-20250805"), &million),
            15_000_000_000
        );
        assert_eq!(
            table.cost(Some("claude-sonnet-4-5-20250929"), &million),
            3_000_000_000
        );
        assert!(table.knows("claude-haiku-4-5"));
        assert!(!table.knows("gpt-4"));
        // Unknown or unnamed: the fallback, the dearest.
        assert_eq!(table.cost(Some("gpt-4"), &million), 15_000_000_000);
        assert_eq!(table.cost(None, &million), 15_000_000_000);
    }

    #[test]
    fn every_kind_of_token_is_priced_and_config_overrides_the_built_in() {
        let mut config = PricingConfig::default();
        config.models.insert(
            "claude-sonnet-4".into(),
            ModelPrice {
                input: 2.0,
                output: 10.0,
                cache_read: Some(0.5),
                cache_write: None,
            },
        );
        config
            .models
            .insert("house-model".into(), ModelPrice::of(1.0, 1.0));
        let table = PriceTable::new(&config);
        // 10 in * 2000 + 20 out * 10000 + 30 read * 500 + 40 write * 2500 nano-dollars.
        assert_eq!(
            table.cost(Some("claude-sonnet-4-5"), &usage(10, 20, 30, 40)),
            20_000 + 200_000 + 15_000 + 100_000
        );
        assert_eq!(table.cost(Some("house-model-v2"), &usage(1, 1, 0, 0)), 2_000);
        // The built-in cache multipliers: a tenth and 1.25 times the input price.
        assert_eq!(
            table.cost(Some("claude-haiku-4-5"), &usage(0, 0, 1000, 1000)),
            100_000 + 1_250_000
        );
    }
}
