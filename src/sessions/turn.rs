//! One turn, driven to its end in its own task: the client may read its events or go away; the
//! turn completes, is recorded, and never leaks output into the next turn (the session's process
//! stays locked until this turn's result has been read).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::agents::{AgentPool, Slot};
use crate::agent::{AgentEvent, AgentProcess};
use crate::domain::{SessionRecord, TurnErrorCode, TurnEvent, TurnOutcome};
use crate::store::SessionStore;

/// How long an interrupted CLI gets to end its turn before it is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(3);

/// What a turn needs.
pub(super) struct Turn {
    pub pool: Arc<AgentPool>,
    pub store: Arc<dyn SessionStore>,
    pub slot: Arc<Slot>,
    pub record: SessionRecord,
    pub message: String,
    pub timeout: Option<Duration>,
    pub events: mpsc::UnboundedSender<TurnEvent>,
}

/// Releases the slot however the turn ends (even by panic).
struct Claim(Arc<Slot>);

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl Turn {
    /// Runs the turn to its terminal event, records it, then releases the session.
    pub async fn run(self) {
        let _claim = Claim(self.slot.clone());
        let session = self.record.session_id;
        let mut interrupts = self.slot.listen_for_interrupts();
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let fail = |code: TurnErrorCode, message: String| TurnEvent::Error {
            code,
            message,
            partial: TurnOutcome::default(),
        };

        // Waiting for a turn slot or a process start can itself be interrupted or time out.
        let permit = tokio::select! {
            permit = self.pool.turns.clone().acquire_owned() => permit.expect("semaphore open"),
            Some(code) = interrupts.recv() => return self.finish(fail(code, "stopped before it started".into()), false).await,
            _ = sleep_until(deadline) => return self.finish(fail(TurnErrorCode::TurnTimeout, "timed out waiting for a free turn slot".into()), false).await,
        };
        let mut guard = self.slot.process.lock().await;
        if guard.as_ref().is_some_and(AgentProcess::has_exited) {
            // It died between turns (killed, crashed): clean up and start afresh with --resume.
            let dead = guard.take().expect("checked");
            tracing::warn!(session.id = %session, agent.stderr = %dead.stderr_tail(), "agent had exited while idle");
            dead.reap_after_crash().await;
            self.slot.set_live(false);
        }
        if guard.is_none() {
            match self.pool.start(&self.slot, &self.record).await {
                Ok(process) => *guard = Some(process),
                Err(e) => {
                    let code = e.to_string();
                    tracing::error!(session.id = %session, error = %code, "cannot start the agent");
                    drop(guard);
                    return self
                        .finish(fail(TurnErrorCode::AgentUnavailable, code), false)
                        .await;
                }
            }
        }
        let process = guard.as_mut().expect("started");
        let control = process.control();
        let mut kill_at: Option<Instant> = None;
        let mut crashed = false;
        let gone = crate::agent::ExitInfo {
            code: None,
            signal: None,
        };

        let terminal = if process
            .start_turn(&self.message, self.events.clone())
            .await
            .is_err()
        {
            crashed = true;
            process.end_turn_on_exit(gone)
        } else {
            loop {
                tokio::select! {
                    event = process.next_event() => match event {
                        Some(AgentEvent::Finished { terminal, cost_total }) => {
                            if let Some(total) = cost_total {
                                process.set_cost_total(total);
                            }
                            break terminal;
                        }
                        Some(AgentEvent::Exited(exit)) => {
                            crashed = true;
                            if !process.turn_stopped() {
                                tracing::error!(session.id = %session, agent.exit = %exit, agent.stderr = %process.stderr_tail(), "agent died mid-turn");
                            }
                            break process.end_turn_on_exit(exit);
                        }
                        None => {
                            crashed = true;
                            break process.end_turn_on_exit(gone);
                        }
                    },
                    Some(code) = interrupts.recv(), if kill_at.is_none() => {
                        process.stop_turn_as(code);
                        kill_at = Some(Instant::now() + INTERRUPT_GRACE);
                        let control = control.clone();
                        tokio::spawn(async move { let _ = control.interrupt().await; });
                    }
                    _ = sleep_until(deadline), if kill_at.is_none() => {
                        process.stop_turn_as(TurnErrorCode::TurnTimeout);
                        kill_at = Some(Instant::now() + INTERRUPT_GRACE);
                        let control = control.clone();
                        tokio::spawn(async move { let _ = control.interrupt().await; });
                    }
                    _ = sleep_until(kill_at) => {
                        tracing::warn!(session.id = %session, "agent ignored the interrupt; killing it");
                        process.force_kill();
                        kill_at = Some(Instant::now() + Duration::from_secs(3600));
                    }
                }
            }
        };
        if crashed && let Some(dead) = guard.take() {
            self.slot.set_live(false);
            dead.reap_after_crash().await;
        }
        drop(guard);
        drop(permit);
        self.finish(terminal, true).await;
    }

    /// Records the turn and delivers its terminal event (after the record, so a client that sees
    /// `done` also sees the new message count).
    async fn finish(&self, terminal: TurnEvent, counted: bool) {
        let id = self.record.session_id;
        match self.store.touch(id, Utc::now(), u64::from(counted)).await {
            Ok(true) => {}
            Ok(false) => {
                // Deleted or expired while the turn ran: nothing of it may stay behind.
                let pool = self.pool.clone();
                let user = self.record.user_id.clone();
                tokio::spawn(async move { pool.forget(id, &user).await });
            }
            Err(e) => tracing::error!(session.id = %id, error = %e, "cannot record the turn"),
        }
        let _ = self.events.send(terminal);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
