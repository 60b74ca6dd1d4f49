//! Receipts of state scripts: what a script answered, kept in Redis for a few seconds.
//!
//! A call whose answer does not come back (past the call's 3 s: a slow command Redis ran
//! between the script and its answer, oauthd's own process paused; or the connection broke
//! after Redis ran it) would answer 503 for a change that was made: a consume answered
//! 503 had taken the state, and the retry found nothing. Each state script that wrote
//! something ends by writing its answer under `P rc:<call>` (`RECEIPT_TTL_MS`), and such a
//! call reads it back once its deadline has passed on Redis' clock: a script that had not
//! begun by then never changes anything (`clock::FENCE_LUA`), and one that had begun has
//! finished before the read runs (Redis runs one command at a time). So a receipt is the
//! answer the call lost, and none means that nothing was changed. (A script that changed
//! nothing, a consume of an unknown state, leaves none: its call's 503 is true, and a
//! flood of such calls writes nothing.)

use redis::aio::ConnectionManager;
use redis::Script;
use std::sync::LazyLock;
use tokio::time::{Duration, Instant};

/// How long a receipt is kept: past the latest read that may ask for it
/// (`READ_WITHIN_MS` after the deadline), counted from the earliest a script may run
/// (3 s before its deadline, or it answers `EARLY`), with a margin.
const RECEIPT_TTL_MS: i64 = 15_000;

/// The latest a receipt is read, after its call's deadline on Redis' clock: later, it
/// may have expired, and none found would not mean that nothing ran. Room for oauthd's
/// own process to be paused (a VM's snapshot, a stop) for about 12 s after the call began.
const READ_WITHIN_MS: i64 = 10_000;

/// How long a call that lost its answer spends reading the receipt, from its deadline
/// on (or from when the answer was lost, when that is later).
pub(super) const READ_FOR: Duration = Duration::from_secs(3);

/// Run by every state script after the deadline's check: takes the receipt's key off
/// `ARGV` (the last argument once the deadline is off), and defines `call`, Redis' own
/// `redis.call` that notes whether the script wrote, through which the scripts call Redis.
pub(super) const PRELUDE: &str = r#"
local RC = table.remove(ARGV)
local wrote = false
local READS = {GET = true, ZCOUNT = true, ZRANGE = true, ZCARD = true, PTTL = true}
local function call(command, ...)
  if not READS[command] then wrote = true end
  return redis.call(command, ...)
end
"#;

/// A state script's body, run so that its answer (a list of strings) is written as its
/// receipt before it is returned, when it wrote something. A receipt that cannot be
/// written (Redis out of memory, for a script that wrote nothing that took room) is left
/// out: the answer still goes back.
pub(super) fn with_receipt(body: &str) -> String {
    format!(
        "local function body()\n{body}\nend\n\
         local answer = body()\n\
         if wrote then\n\
         local encoded, text = pcall(cjson.encode, answer)\n\
         if encoded then redis.pcall('SET', RC, text, 'PX', {RECEIPT_TTL_MS}) end\n\
         end\n\
         return answer\n"
    )
}

/// KEYS: the receipt. ARGV: the call's deadline, how long after it a read is still sure.
/// `{"wait", ms}` before the deadline, `{"stale"}` too long after it, else `{"done",
/// answer}` or `{"none"}`.
static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{}",
        super::clock::NOW_LUA,
        r#"
local deadline, within = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_ms()
if now <= deadline then return {'wait', string.format('%d', deadline - now + 1)} end
if now > deadline + within then return {'stale'} end
local v = redis.call('GET', KEYS[1])
if not v then return {'none'} end
return {'done', v}
"#
    ))
});

/// What a receipt says about a call that lost its answer.
pub(super) enum Receipt {
    /// The script ran, and answered this.
    Ran(Vec<Vec<u8>>),
    /// It did not run, and never will.
    NotRun,
    /// Not known, and why: Redis did not answer in time, or the read came too late.
    Unknown(String),
}

/// Reads the receipt `key` of a call whose script carried `deadline_ms` (about `due` on
/// this process' clock), until `READ_FOR` after `due` or after now, whichever is later: a
/// Redis killed as it ran the script, and back a few seconds on, still has the receipt.
/// On a broken connection it tries again as the connection comes back.
pub(super) async fn read(
    conn: &mut ConnectionManager,
    key: &str,
    deadline_ms: i64,
    due: Instant,
) -> Receipt {
    let until = due.max(Instant::now()) + READ_FOR;
    let mut last = String::from("no answer");
    let read = async {
        loop {
            let asked: redis::RedisResult<Vec<Vec<u8>>> = READ
                .key(key)
                .arg(deadline_ms)
                .arg(READ_WITHIN_MS)
                .invoke_async(conn)
                .await;
            let nap = match asked.as_deref() {
                Ok([kind, answer]) if kind == b"done" => return decode(answer),
                Ok([kind]) if kind == b"none" => return Receipt::NotRun,
                Ok([kind, ms]) if kind == b"wait" => std::str::from_utf8(ms)
                    .ok()
                    .and_then(|ms| ms.parse::<u64>().ok())
                    .map_or(Duration::from_millis(100), Duration::from_millis),
                Ok([kind]) if kind == b"stale" => {
                    return Receipt::Unknown("read too long after the change's deadline".into())
                }
                // Not answered yet: the connection coming back, Redis loading its files,
                // busy with a long script (it runs the read after it), or a replica taking
                // over.
                Err(e)
                    if e.is_io_error()
                        || e.is_connection_dropped()
                        || e.is_timeout()
                        || matches!(
                            e.code(),
                            Some("BUSY" | "LOADING" | "TRYAGAIN" | "MASTERDOWN")
                        ) =>
                {
                    last = e.to_string();
                    Duration::from_millis(100)
                }
                Err(e) => return Receipt::Unknown(e.to_string()),
                Ok(_) => return Receipt::Unknown("an answer of another shape".into()),
            };
            if Instant::now() + nap >= until {
                return Receipt::Unknown(last.clone());
            }
            tokio::time::sleep(nap).await;
        }
    };
    match tokio::time::timeout_at(until, read).await {
        Ok(receipt) => receipt,
        Err(_) => Receipt::Unknown(last),
    }
}

/// A receipt's answer (`cjson`'s encoding of a list of strings; `{}` for an empty one).
fn decode(answer: &[u8]) -> Receipt {
    match serde_json::from_slice::<serde_json::Value>(answer) {
        Ok(serde_json::Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                serde_json::Value::String(s) => Some(s.into_bytes()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map_or_else(
                || Receipt::Unknown("a receipt not read".into()),
                Receipt::Ran,
            ),
        Ok(serde_json::Value::Object(o)) if o.is_empty() => Receipt::Ran(Vec::new()),
        _ => Receipt::Unknown("a receipt not read".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ran(answer: &str) -> Option<Vec<Vec<u8>>> {
        match decode(answer.as_bytes()) {
            Receipt::Ran(r) => Some(r),
            _ => None,
        }
    }

    #[test]
    fn a_receipt_reads_back_as_the_answer_it_holds() {
        assert_eq!(
            ran(r#"["row","{\"n\":\"a\/b\"}"]"#),
            Some(vec![b"row".to_vec(), br#"{"n":"a/b"}"#.to_vec()])
        );
        // cjson writes an empty list as an object.
        assert_eq!(ran("{}"), Some(Vec::new()));
        assert_eq!(ran(r#"[1]"#), None);
        assert_eq!(ran("not json"), None);
    }
}
