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

/// How one attempt at a turn ended.
struct Run {
    terminal: TurnEvent,
    /// The process is gone.
    crashed: bool,
    /// It died before printing anything for this turn (and we did not stop it).
    silent: bool,
    /// We had asked it to stop (interrupt, timeout, shutdown).
    stopped: bool,
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
        // A CLI that dies without printing anything for this turn never began it (it was killed or
        // crashed while idle, or just as the message was written): it is replaced (`--resume`) and
        // the message handed over once more.
        let mut attempt = 0;
        let terminal = loop {
            attempt += 1;
            if guard.as_ref().is_some_and(AgentProcess::is_gone) {
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
            let run = self.drive(process, &mut interrupts, deadline).await;
            if run.crashed {
                let dead = guard.take().expect("present");
                self.slot.set_live(false);
                if run.silent && attempt < 2 {
                    tracing::warn!(session.id = %session, agent.stderr = %dead.stderr_tail(), "agent died before the turn began; retrying on a fresh process");
                    dead.reap_after_crash().await;
                    continue;
                }
                if !run.stopped {
                    tracing::error!(session.id = %session, agent.stderr = %dead.stderr_tail(), "agent died mid-turn");
                }
                dead.reap_after_crash().await;
            }
            break run.terminal;
        };
        drop(guard);
        drop(permit);
        self.finish(terminal, true).await;
    }

    /// Hands the message to the process and follows the turn to its end, stopping it on interrupt
    /// or timeout (and killing a CLI that ignores the stop).
    async fn drive(
        &self,
        process: &mut AgentProcess,
        interrupts: &mut mpsc::UnboundedReceiver<TurnErrorCode>,
        deadline: Option<Instant>,
    ) -> Run {
        let gone = crate::agent::ExitInfo {
            code: None,
            signal: None,
        };
        if process
            .start_turn(&self.message, self.events.clone())
            .await
            .is_err()
        {
            let silent = process.turn_silent();
            return Run {
                terminal: process.end_turn_on_exit(gone),
                crashed: true,
                silent,
                stopped: false,
            };
        }
        let control = process.control();
        let mut kill_at: Option<Instant> = None;
        loop {
            tokio::select! {
                event = process.next_event() => {
                    let exit = match event {
                        Some(AgentEvent::Finished { terminal, cost_total }) => {
                            if let Some(total) = cost_total {
                                process.set_cost_total(total);
                            }
                            return Run { terminal, crashed: false, silent: false, stopped: false };
                        }
                        Some(AgentEvent::Exited(exit)) => exit,
                        None => gone,
                    };
                    let stopped = process.turn_stopped();
                    let silent = !stopped && process.turn_silent();
                    return Run { terminal: process.end_turn_on_exit(exit), crashed: true, silent, stopped };
                }
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
                    tracing::warn!(session.id = %self.record.session_id, "agent ignored the interrupt; killing it");
                    process.force_kill();
                    kill_at = Some(Instant::now() + Duration::from_secs(3600));
                }
            }
        }
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
