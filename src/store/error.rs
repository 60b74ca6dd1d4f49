//! What a store says when it cannot do what was asked, or finds what it cannot read.

/// A storage fault. All of them are the operator's problem, not the client's: the HTTP
/// layer answers 503 and the next request tries again.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: the database is locked by another process or connection")]
    Busy { context: &'static str },
    #[error("{context}: the disk is full")]
    Full { context: &'static str },
    /// The database's files reached the process's file-size limit (`RLIMIT_FSIZE`): as a
    /// full disk, said as what it is.
    #[error("{context}: the database reached oauthd's file-size limit (LimitFSIZE=, ulimit -f)")]
    SizeLimit { context: &'static str },
    #[error("{context}: the database is read-only")]
    ReadOnly { context: &'static str },
    /// A file of the database was deleted or replaced under oauthd: writes would be lost.
    #[error("{context}: the database file, or its -wal or -shm file, was deleted or replaced while oauthd had it open (what it wrote now would be lost); oauthd's log says what to do")]
    Moved { context: &'static str },
    /// SQLite found the file damaged (SQLITE_CORRUPT): no retry mends it.
    #[error("{context}: the database is damaged")]
    Damaged { context: &'static str },
    #[error("{context}: Redis is out of memory (maxmemory reached) and refuses writes")]
    OutOfMemory { context: &'static str },
    /// Redis refuses writes because it cannot save to disk; reads answer.
    #[error("{context}: Redis refuses writes because it cannot save to disk (MISCONF)")]
    NotSaving { context: &'static str },
    /// The store's server did not answer: `why` is for the log (an I/O error, a timeout).
    #[error("{context}: Redis is unreachable ({why})")]
    Unreachable { context: &'static str, why: String },
    /// Redis refused oauthd's password, or asks for one it was not given: `why`, what to
    /// set, is for the log.
    #[error("{context}: {why}")]
    PasswordRefused { context: &'static str, why: String },
    #[error("{context}: {message}")]
    Unavailable {
        context: &'static str,
        message: String,
    },
    #[error("{0}")]
    Conflict(String),
}

impl StoreError {
    /// Whether reads may still answer at once while this fault holds: writes refused (a
    /// lock another process holds, a disk read-only or full, Redis at maxmemory), not a
    /// store that does not answer, or whose files are not the ones opened.
    pub fn reads_answer(&self) -> bool {
        matches!(
            self,
            StoreError::Busy { .. }
                | StoreError::Full { .. }
                | StoreError::SizeLimit { .. }
                | StoreError::ReadOnly { .. }
                | StoreError::OutOfMemory { .. }
                | StoreError::NotSaving { .. }
                | StoreError::Conflict(_)
        )
    }

    pub fn unavailable(context: &'static str, message: impl ToString) -> Self {
        StoreError::Unavailable {
            context,
            message: message.to_string(),
        }
    }

    /// What is told to whoever called over HTTP, who may not be the operator: the fixed
    /// texts (locked, full, read-only, out of memory, unreachable, a password refused) as
    /// they are; an unexpected fault's own message, which may name a file, an address or a
    /// setting, only in oauthd's log.
    pub fn for_callers(&self) -> String {
        match self {
            StoreError::Unavailable { context, message } => {
                log_unavailable(context, message);
                format!("{context}: the storage did not answer; oauthd's log says why")
            }
            StoreError::Damaged { context } => {
                DAMAGE_LOGGED.error(format_args!(
                    "{context}: the database is damaged (SQLite: database disk image is malformed); oauthd cannot mend it: stop oauthd, then restore the last copy (`oauthd restore`) or save what SQLite still reads (`sqlite3 DB .recover`); /readyz answers 503 until then"
                ));
                format!("{context}: the database is damaged; oauthd's log says what to do")
            }
            StoreError::Unreachable { context, why } => {
                log_unavailable(context, &format!("Redis is unreachable ({why})"));
                format!("{context}: Redis is unreachable; oauthd's log says why")
            }
            StoreError::NotSaving { context } => {
                log_unavailable(context, "Redis refuses writes because it cannot save to disk (MISCONF): see Redis' log, and its `dir` and free space");
                self.to_string()
            }
            StoreError::PasswordRefused { context, why } => {
                log_unavailable(context, why);
                format!("{context}: Redis refused oauthd's password, or asks for one it was not given; oauthd's log says what to set")
            }
            other => other.to_string(),
        }
    }
}

/// Storage faults said in the log: at most 5 a second (`logging::Budget`).
pub(crate) static FAULTS_LOGGED: crate::logging::Budget =
    crate::logging::Budget::new("more storage faults", 5);

/// A damaged database said in the log: once a minute, at ERROR.
static DAMAGE_LOGGED: crate::logging::Budget =
    crate::logging::Budget::per_minute("more requests that met the damaged database", 1);

/// Logs a fault's message for `for_callers`, within `FAULTS_LOGGED`.
fn log_unavailable(context: &str, message: &str) {
    FAULTS_LOGGED.warn(format_args!("{context}: {message}"));
}

/// A stored value oauthd does not know: a damaged row, or one written by a newer version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?} in the store")]
pub struct UnknownValue {
    pub kind: &'static str,
    pub value: String,
}

impl UnknownValue {
    pub(super) fn new(kind: &'static str, value: &str) -> Self {
        UnknownValue {
            kind,
            value: value.chars().take(64).collect(),
        }
    }
}
