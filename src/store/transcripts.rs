//! The CLI's own transcript of each session (what `--resume` reads), kept in the store as the CLI
//! writes it, so a session never depends on one disk: the runtime writes the file back from here
//! when it is missing or shorter. Deleting a session removes its transcript.

use async_trait::async_trait;

use super::StoreError;
use crate::domain::SessionId;

/// A session's transcript: where the CLI keeps it (relative to the user's CLI config dir) and its
/// lines, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    /// The file's path relative to the CLI's config dir (`projects/<encoded cwd>/<id>.jsonl`).
    pub path: String,
    /// Its JSON lines, in order.
    pub lines: Vec<String>,
}

impl Transcript {
    /// A transcript from stored `(path, line)` rows in order; `None` without rows. The path is
    /// the last row's (the CLI may move its file, e.g. to another project folder).
    pub fn from_rows(rows: Vec<(String, String)>) -> Option<Transcript> {
        let path = rows.last()?.0.clone();
        Some(Transcript {
            path,
            lines: rows.into_iter().map(|(_, line)| line).collect(),
        })
    }
}

/// Where transcripts live. Writing for a session that no longer exists changes nothing.
#[async_trait]
pub trait TranscriptStore: Send + Sync + 'static {
    /// Appends lines to the session's transcript (the path is the file the CLI wrote them to).
    async fn append_transcript(
        &self,
        session: SessionId,
        path: &str,
        lines: &[String],
    ) -> Result<(), StoreError>;
    /// The session's transcript, if any line was stored.
    async fn transcript(&self, session: SessionId) -> Result<Option<Transcript>, StoreError>;
}
