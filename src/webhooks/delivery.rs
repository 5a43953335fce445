//! The delivery worker: claims due deliveries from the store (under a lease, so instances sharing
//! the store never send one at the same time), POSTs each signed body to its endpoint, and records
//! the attempt: delivered on a 2xx, else tried again after an exponential backoff until
//! `webhook_delivery.max_attempts`. It sleeps until the next delivery is due or a new one is
//! stored, and stops between rounds when asked (attempts under way get a short grace, then are
//! recorded as cut short and left to the next run).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Notify, watch};

use super::{Endpoint, Policy, signature};
use crate::store::{AttemptOutcome, ClaimedDelivery, WebhookAttempt, WebhookDelivery, WebhookStore};

/// Deliveries claimed (and sent at once) in one round.
const BATCH: u32 = 32;

/// How much longer than an attempt's timeout a claim's lease lasts: an attempt always ends (and
/// is recorded) within its lease, so no other instance takes the delivery meanwhile.
const LEASE_MARGIN: Duration = Duration::from_secs(60);

/// The longest sleep between looks at the store: deliveries stored by another instance sharing it
/// (whose own worker may have stopped) are found within this.
const POLL: Duration = Duration::from_secs(30);

/// The pause after the store failed.
const STORE_RETRY: Duration = Duration::from_secs(2);

/// The shortest sleep, so a delivery due in the past that cannot be claimed yet is not spun on.
const MIN_SLEEP: Duration = Duration::from_millis(20);

/// How long attempts under way may go on once the service stops; then they are cut short and
/// recorded as failed (to be tried again by the next run), so a stop is not held up by an endpoint.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// What one attempt needs.
pub(super) struct Worker {
    endpoints: Vec<Endpoint>,
    policy: Policy,
    store: Arc<dyn WebhookStore>,
    client: reqwest::Client,
}

/// Why an attempt failed.
struct Failure {
    http_status: Option<u16>,
    error: String,
    /// No further attempt can succeed.
    final_: bool,
}

impl Worker {
    /// A worker sending to `endpoints` with `policy`.
    pub(super) fn new(endpoints: Vec<Endpoint>, policy: Policy, store: Arc<dyn WebhookStore>) -> Worker {
        crate::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .user_agent(concat!(
                "claude-agent-http/",
                env!("CARGO_PKG_VERSION"),
                " (webhooks)"
            ))
            .timeout(policy.timeout)
            // A redirect is an answer other than 2xx: the endpoint's URL is what was configured.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client with a crypto provider installed");
        Worker {
            endpoints,
            policy,
            store,
            client,
        }
    }

    /// Makes one attempt of a claimed delivery and records it; cut short `STOP_GRACE` after
    /// `stopped` says so.
    async fn attempt(&self, claimed: ClaimedDelivery, mut stopped: watch::Receiver<bool>) {
        let ClaimedDelivery { delivery, claim } = claimed;
        let number = delivery.attempts + 1;
        let at = Utc::now();
        let stopping = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
            tokio::time::sleep(STOP_GRACE).await;
        };
        let result = match self.endpoints.iter().find(|e| e.url == delivery.url) {
            Some(endpoint) => tokio::select! {
                result = self.post(endpoint, &delivery, number) => result,
                () = stopping => Err(Failure {
                    http_status: None,
                    error: "the service stopped during the attempt".into(),
                    final_: false,
                }),
            },
            None => Err(Failure {
                http_status: None,
                error: "no webhook with this url is configured any more".into(),
                final_: true,
            }),
        };
        let attempt = match result {
            Ok(status) => {
                tracing::info!(webhook.delivery = %delivery.id, webhook.event = %delivery.event, webhook.attempt = number, http.status = status, "webhook delivered");
                WebhookAttempt {
                    at,
                    http_status: Some(status),
                    error: None,
                    outcome: AttemptOutcome::Delivered,
                }
            }
            Err(failure) => {
                let outcome = if failure.final_ || number >= self.policy.max_attempts {
                    tracing::error!(webhook.delivery = %delivery.id, webhook.event = %delivery.event, webhook.attempt = number, error = %failure.error, "webhook delivery failed for good");
                    AttemptOutcome::Failed
                } else {
                    let wait = self.policy.backoff(number);
                    tracing::warn!(webhook.delivery = %delivery.id, webhook.event = %delivery.event, webhook.attempt = number, error = %failure.error, retry_in_ms = wait.as_millis() as u64, "webhook delivery failed; retrying");
                    AttemptOutcome::RetryAt(Utc::now() + wait)
                };
                WebhookAttempt {
                    at,
                    http_status: failure.http_status,
                    error: Some(failure.error),
                    outcome,
                }
            }
        };
        match self
            .store
            .record_webhook_attempt(delivery.id, claim, &attempt)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(webhook.delivery = %delivery.id, "a webhook attempt outlived its lease; another claim took the delivery")
            }
            // The lease runs out and the delivery is tried again.
            Err(e) => {
                tracing::warn!(webhook.delivery = %delivery.id, error = %e, "cannot record a webhook attempt")
            }
        }
    }

    /// POSTs the delivery's body, signed; the answer's status if it is a 2xx.
    async fn post(
        &self,
        endpoint: &Endpoint,
        delivery: &WebhookDelivery,
        number: u32,
    ) -> Result<u16, Failure> {
        let timestamp = Utc::now().timestamp();
        let sent = self
            .client
            .post(&delivery.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("x-webhook-id", delivery.event_id.to_string())
            .header("x-webhook-event", &delivery.event)
            .header("x-webhook-delivery", delivery.id.to_string())
            .header("x-webhook-attempt", number.to_string())
            .header("x-webhook-timestamp", timestamp.to_string())
            .header(
                "x-webhook-signature",
                signature::sign(&endpoint.secret, timestamp, &delivery.payload),
            )
            .body(delivery.payload.clone())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => Ok(response.status().as_u16()),
            Ok(response) => Err(Failure {
                http_status: Some(response.status().as_u16()),
                error: format!("the endpoint answered {}", response.status()),
                final_: false,
            }),
            Err(e) => Err(Failure {
                http_status: None,
                error: describe(&e, self.policy.timeout),
                final_: false,
            }),
        }
    }
}

/// A request error for people, without the URL (it is shown beside it) and with its cause.
fn describe(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        return format!("no answer within {} s", timeout.as_secs());
    }
    let what = if error.is_connect() {
        "cannot connect"
    } else {
        "the request failed"
    };
    let mut cause = std::error::Error::source(error);
    let mut deepest = None;
    while let Some(inner) = cause {
        deepest = Some(inner.to_string());
        cause = inner.source();
    }
    match deepest {
        Some(cause) => format!("{what}: {cause}"),
        None => what.to_string(),
    }
}

/// Runs until `stopped` says so: a round of claimed deliveries, sent at once, then a sleep until
/// the next is due, a new one is stored (`wake`), or `POLL` passes.
pub(super) async fn run(worker: Worker, wake: Arc<Notify>, mut stopped: watch::Receiver<bool>) {
    let lease = chrono::Duration::from_std(worker.policy.timeout + LEASE_MARGIN)
        .unwrap_or_else(|_| chrono::Duration::minutes(10));
    loop {
        if *stopped.borrow() {
            return;
        }
        let wait = match worker.store.claim_webhooks(Utc::now(), lease, BATCH).await {
            Ok(claimed) if !claimed.is_empty() => {
                let attempts = claimed.into_iter().map(|c| worker.attempt(c, stopped.clone()));
                futures_util::future::join_all(attempts).await;
                continue;
            }
            Ok(_) => match worker.store.next_webhook_due().await {
                Ok(Some(due)) => (due - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .clamp(MIN_SLEEP, POLL),
                Ok(None) => POLL,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read when the next webhook delivery is due");
                    STORE_RETRY
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim webhook deliveries");
                STORE_RETRY
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wake.notified() => {}
            _ = stopped.changed() => return,
        }
    }
}
