//! The conformance story of `WebhookStore`: every backend keeps webhook deliveries, hands each due
//! one to one claim at a time under a lease, and records attempts the same way. Each story runs on
//! every backend, opened fresh.

use std::collections::HashSet;

use chrono::{DateTime, Duration, TimeZone, Utc};
use claude_agent_http::store::{
    AttemptOutcome, DeliveryQuery, DeliveryStatus, StoreError, WebhookAttempt, WebhookDelivery,
};
use uuid::Uuid;

use crate::event_store::Backend;

/// Now, to the microsecond (what every backend keeps).
fn now() -> DateTime<Utc> {
    Utc.timestamp_micros(Utc::now().timestamp_micros()).unwrap()
}

/// A pending delivery of `event` created (and due) at `at`.
fn delivery(event: &str, at: DateTime<Utc>) -> WebhookDelivery {
    let event_id = Uuid::new_v4();
    WebhookDelivery::new(
        event_id,
        event,
        "https://hooks.example/in?tenant=é",
        format!(r#"{{"id":"{event_id}","type":"{event}","data":{{"text":"naïve ✓"}}}}"#),
        at,
    )
}

fn lease() -> Duration {
    Duration::seconds(60)
}

macro_rules! conformance {
    ($($backend:ident => $open:ident;)*) => {$(
        mod $backend {
            conformance!(@stories $open;
                deliveries_are_kept_as_given_and_listed_newest_first,
                a_duplicate_id_is_a_conflict_and_stores_nothing_of_its_batch,
                a_claim_takes_due_deliveries_once_until_its_lease_runs_out,
                an_attempt_counts_and_sets_what_comes_next_for_its_claim_only,
                the_next_due_time_counts_leases,
                pruning_removes_only_finished_deliveries_older_than_the_cutoff,
                concurrent_claims_never_share_a_delivery);
        }
    )*};
    (@stories $open:ident; $($story:ident),*) => {$(
        #[tokio::test]
        async fn $story() {
            let dir = tempfile::tempdir().unwrap();
            let backend = crate::event_store::$open(dir.path().join("sessions.db")).await;
            super::$story(backend).await
        }
    )*};
}

conformance! {
    memory => open_memory;
    sqlite => open_sqlite;
    postgres => open_postgres;
}

async fn deliveries_are_kept_as_given_and_listed_newest_first(backend: Backend) {
    let start = now();
    let oldest = delivery("turn.completed", start - Duration::seconds(30));
    let middle = delivery("turn.failed", start - Duration::seconds(20));
    let newest = delivery("turn.completed", start - Duration::seconds(10));
    backend
        .webhooks
        .insert_webhooks(&[oldest.clone(), middle.clone()])
        .await
        .unwrap();
    backend
        .webhooks
        .insert_webhooks(std::slice::from_ref(&newest))
        .await
        .unwrap();
    let all = |limit| DeliveryQuery {
        limit,
        ..DeliveryQuery::default()
    };
    assert_eq!(
        backend.webhooks.webhook_deliveries(&all(10)).await.unwrap(),
        vec![newest.clone(), middle.clone(), oldest.clone()]
    );
    assert_eq!(
        backend.webhooks.webhook_deliveries(&all(2)).await.unwrap(),
        vec![newest.clone(), middle.clone()]
    );
    assert_eq!(
        backend.webhooks.webhook_deliveries(&all(0)).await.unwrap(),
        vec![]
    );
    let completed = DeliveryQuery {
        event: Some("turn.completed".into()),
        ..all(10)
    };
    assert_eq!(
        backend.webhooks.webhook_deliveries(&completed).await.unwrap(),
        vec![newest.clone(), oldest.clone()]
    );
    let older_page = DeliveryQuery {
        before: Some(middle.created_at),
        ..all(10)
    };
    assert_eq!(
        backend.webhooks.webhook_deliveries(&older_page).await.unwrap(),
        vec![oldest.clone()]
    );
    for (status, expected) in [
        (DeliveryStatus::Pending, 3),
        (DeliveryStatus::Delivered, 0),
        (DeliveryStatus::Failed, 0),
    ] {
        let query = DeliveryQuery {
            status: Some(status),
            ..all(10)
        };
        assert_eq!(
            backend.webhooks.webhook_deliveries(&query).await.unwrap().len(),
            expected,
            "{status:?}"
        );
    }
}

async fn a_duplicate_id_is_a_conflict_and_stores_nothing_of_its_batch(backend: Backend) {
    let first = delivery("turn.completed", now());
    backend
        .webhooks
        .insert_webhooks(std::slice::from_ref(&first))
        .await
        .unwrap();
    let fresh = delivery("turn.failed", now());
    let again = WebhookDelivery {
        event: "session.deleted".into(),
        ..first.clone()
    };
    let refused = backend.webhooks.insert_webhooks(&[fresh, again]).await;
    assert!(matches!(refused, Err(StoreError::Conflict(_))), "{refused:?}");
    let listed = backend
        .webhooks
        .webhook_deliveries(&DeliveryQuery {
            limit: 10,
            ..DeliveryQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(listed, vec![first], "nothing of the refused batch is kept");
}

async fn a_claim_takes_due_deliveries_once_until_its_lease_runs_out(backend: Backend) {
    let start = now();
    let older = delivery("turn.completed", start - Duration::seconds(5));
    let due = delivery("turn.completed", start);
    let mut later = delivery("turn.failed", start);
    later.next_attempt_at = start + Duration::seconds(30);
    backend
        .webhooks
        .insert_webhooks(&[later.clone(), due.clone(), older.clone()])
        .await
        .unwrap();

    let first = backend.webhooks.claim_webhooks(start, lease(), 1).await.unwrap();
    let ids: Vec<Uuid> = first.iter().map(|c| c.delivery.id).collect();
    assert_eq!(ids, vec![older.id], "the oldest due first, at most the limit");
    assert_eq!(first[0].delivery, older, "as stored");
    let second = backend.webhooks.claim_webhooks(start, lease(), 10).await.unwrap();
    let ids: Vec<Uuid> = second.iter().map(|c| c.delivery.id).collect();
    assert_eq!(
        ids,
        vec![due.id],
        "a leased delivery and one not yet due are not taken"
    );
    assert!(
        backend
            .webhooks
            .claim_webhooks(start + Duration::seconds(59), lease(), 10)
            .await
            .unwrap()
            .iter()
            .all(|c| c.delivery.id == later.id),
        "no lease has run out yet"
    );

    // The leases of the first two run out at start + 60 s: they are claimed again, anew.
    let again = backend
        .webhooks
        .claim_webhooks(start + Duration::seconds(61), lease(), 10)
        .await
        .unwrap();
    let ids: HashSet<Uuid> = again.iter().map(|c| c.delivery.id).collect();
    assert!(ids.contains(&older.id) && ids.contains(&due.id), "{ids:?}");
    let reclaimed = again.iter().find(|c| c.delivery.id == older.id).unwrap();
    assert_ne!(reclaimed.claim, first[0].claim, "a new claim");
}

async fn an_attempt_counts_and_sets_what_comes_next_for_its_claim_only(backend: Backend) {
    let start = now();
    let retried = delivery("turn.completed", start);
    let delivered = delivery("turn.failed", start);
    let failed = delivery("session.deleted", start);
    backend
        .webhooks
        .insert_webhooks(&[retried.clone(), delivered.clone(), failed.clone()])
        .await
        .unwrap();
    let claimed = backend.webhooks.claim_webhooks(start, lease(), 10).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let claim_of = |id: Uuid| claimed.iter().find(|c| c.delivery.id == id).unwrap().claim;

    let attempted = start + Duration::seconds(1);
    let retry_at = start + Duration::seconds(10);
    let failure = WebhookAttempt {
        at: attempted,
        http_status: Some(500),
        error: Some("the endpoint answered 500 Internal Server Error".into()),
        outcome: AttemptOutcome::RetryAt(retry_at),
    };
    assert!(
        !backend
            .webhooks
            .record_webhook_attempt(retried.id, Uuid::new_v4(), &failure)
            .await
            .unwrap(),
        "another claim records nothing"
    );
    assert!(
        !backend
            .webhooks
            .record_webhook_attempt(Uuid::new_v4(), claim_of(retried.id), &failure)
            .await
            .unwrap(),
        "an unknown delivery records nothing"
    );
    assert!(
        backend
            .webhooks
            .record_webhook_attempt(retried.id, claim_of(retried.id), &failure)
            .await
            .unwrap()
    );
    assert!(
        !backend
            .webhooks
            .record_webhook_attempt(retried.id, claim_of(retried.id), &failure)
            .await
            .unwrap(),
        "a claim records one attempt: its lease ended with it"
    );
    let success = WebhookAttempt {
        at: attempted,
        http_status: Some(204),
        error: None,
        outcome: AttemptOutcome::Delivered,
    };
    assert!(
        backend
            .webhooks
            .record_webhook_attempt(delivered.id, claim_of(delivered.id), &success)
            .await
            .unwrap()
    );
    let given_up = WebhookAttempt {
        at: attempted,
        http_status: None,
        error: Some("cannot connect: Connection refused".into()),
        outcome: AttemptOutcome::Failed,
    };
    assert!(
        backend
            .webhooks
            .record_webhook_attempt(failed.id, claim_of(failed.id), &given_up)
            .await
            .unwrap()
    );

    let listed = backend
        .webhooks
        .webhook_deliveries(&DeliveryQuery {
            limit: 10,
            ..DeliveryQuery::default()
        })
        .await
        .unwrap();
    let find = |id: Uuid| listed.iter().find(|d| d.id == id).unwrap().clone();
    assert_eq!(
        find(retried.id),
        WebhookDelivery {
            attempts: 1,
            next_attempt_at: retry_at,
            last_attempt_at: Some(attempted),
            last_http_status: Some(500),
            last_error: failure.error.clone(),
            ..retried.clone()
        }
    );
    assert_eq!(
        find(delivered.id),
        WebhookDelivery {
            status: DeliveryStatus::Delivered,
            attempts: 1,
            last_attempt_at: Some(attempted),
            last_http_status: Some(204),
            delivered_at: Some(attempted),
            ..delivered.clone()
        }
    );
    assert_eq!(
        find(failed.id),
        WebhookDelivery {
            status: DeliveryStatus::Failed,
            attempts: 1,
            last_attempt_at: Some(attempted),
            last_error: given_up.error.clone(),
            ..failed.clone()
        }
    );

    // Only the retried one is claimed again, and not before its time (its lease ended with the
    // attempt, so the next claim need not wait for it).
    let early = backend
        .webhooks
        .claim_webhooks(retry_at - Duration::seconds(1), lease(), 10)
        .await
        .unwrap();
    assert!(early.is_empty(), "{early:?}");
    let next = backend
        .webhooks
        .claim_webhooks(retry_at, lease(), 10)
        .await
        .unwrap();
    let ids: Vec<Uuid> = next.iter().map(|c| c.delivery.id).collect();
    assert_eq!(ids, vec![retried.id]);
    assert_eq!(next[0].delivery.attempts, 1);
}

async fn the_next_due_time_counts_leases(backend: Backend) {
    assert_eq!(backend.webhooks.next_webhook_due().await.unwrap(), None);
    let start = now();
    let soon = delivery("turn.completed", start);
    let mut later = delivery("turn.completed", start);
    later.next_attempt_at = start + Duration::seconds(30);
    backend
        .webhooks
        .insert_webhooks(&[later.clone(), soon.clone()])
        .await
        .unwrap();
    assert_eq!(backend.webhooks.next_webhook_due().await.unwrap(), Some(start));
    // Claimed: not due again before its lease runs out (60 s), so the later one is next.
    let claimed = backend.webhooks.claim_webhooks(start, lease(), 1).await.unwrap();
    assert_eq!(claimed[0].delivery.id, soon.id);
    assert_eq!(
        backend.webhooks.next_webhook_due().await.unwrap(),
        Some(later.next_attempt_at)
    );
    // Delivered: never due again.
    let delivered = WebhookAttempt {
        at: start,
        http_status: Some(200),
        error: None,
        outcome: AttemptOutcome::Delivered,
    };
    assert!(
        backend
            .webhooks
            .record_webhook_attempt(soon.id, claimed[0].claim, &delivered)
            .await
            .unwrap()
    );
    let claimed = backend
        .webhooks
        .claim_webhooks(later.next_attempt_at, lease(), 1)
        .await
        .unwrap();
    assert_eq!(claimed[0].delivery.id, later.id);
    assert_eq!(
        backend.webhooks.next_webhook_due().await.unwrap(),
        Some(later.next_attempt_at + lease()),
        "a leased delivery is due when its lease runs out"
    );
}

async fn pruning_removes_only_finished_deliveries_older_than_the_cutoff(backend: Backend) {
    let start = now();
    let old_delivered = delivery("turn.completed", start - Duration::days(10));
    let old_failed = delivery("turn.failed", start - Duration::days(9));
    let old_pending = delivery("turn.failed", start - Duration::days(8));
    let new_delivered = delivery("turn.completed", start);
    backend
        .webhooks
        .insert_webhooks(&[
            old_delivered.clone(),
            old_failed.clone(),
            old_pending.clone(),
            new_delivered.clone(),
        ])
        .await
        .unwrap();
    let claimed = backend.webhooks.claim_webhooks(start, lease(), 10).await.unwrap();
    for claimed in &claimed {
        let id = claimed.delivery.id;
        let outcome = if id == old_failed.id {
            AttemptOutcome::Failed
        } else if id == old_pending.id {
            AttemptOutcome::RetryAt(start + Duration::hours(1))
        } else {
            AttemptOutcome::Delivered
        };
        let attempt = WebhookAttempt {
            at: start,
            http_status: None,
            error: None,
            outcome,
        };
        assert!(
            backend
                .webhooks
                .record_webhook_attempt(id, claimed.claim, &attempt)
                .await
                .unwrap()
        );
    }
    let pruned = backend
        .webhooks
        .prune_webhooks(start - Duration::days(1))
        .await
        .unwrap();
    assert_eq!(pruned, 2);
    let kept: HashSet<Uuid> = backend
        .webhooks
        .webhook_deliveries(&DeliveryQuery {
            limit: 10,
            ..DeliveryQuery::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(kept, HashSet::from([old_pending.id, new_delivered.id]));
}

async fn concurrent_claims_never_share_a_delivery(backend: Backend) {
    let start = now();
    let deliveries: Vec<WebhookDelivery> = (0..60).map(|_| delivery("turn.completed", start)).collect();
    backend.webhooks.insert_webhooks(&deliveries).await.unwrap();
    let claimers = (0..6).map(|_| {
        let store = backend.webhooks.clone();
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let claimed = store.claim_webhooks(start, lease(), 4).await.unwrap();
                if claimed.is_empty() {
                    return mine;
                }
                mine.extend(claimed.into_iter().map(|c| c.delivery.id));
                tokio::task::yield_now().await;
            }
        })
    });
    let mut seen = Vec::new();
    for claimer in claimers {
        seen.extend(claimer.await.unwrap());
    }
    let distinct: HashSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(seen.len(), distinct.len(), "a delivery was claimed twice");
    let all: HashSet<Uuid> = deliveries.iter().map(|d| d.id).collect();
    assert_eq!(distinct, all, "every due delivery was claimed");
}
