//! Redis' clock as this process reads it, for the deadlines state scripts carry.
//!
//! A command that waits past `OP_TIMEOUT` is answered 503, but Redis still runs it when it
//! gets to it (after a stall, a `SIGSTOP`, a slow script ahead of it): a consume answered
//! 503 had then taken the state, and the retry the 503 asks for found nothing. Each state
//! script therefore carries a deadline on Redis' own clock, `FENCE` after its call began,
//! and changes nothing when Redis runs it later (`LATE`): a call that lost its answer
//! reads the script's receipt once the deadline has passed (`receipt`), and a 503 means
//! that nothing was done, short of a Redis that did not answer that read either.

use redis::aio::ConnectionManager;
use redis::RedisResult;
use std::sync::Mutex;
use tokio::time::{Duration, Instant};

/// How long after its call began a state script may still change something: a second
/// short of `OP_TIMEOUT`, for the answer to come back in.
pub(super) const FENCE: Duration = Duration::from_secs(2);

/// How long a reading of Redis' clock is used for: the clocks of two hosts drift apart
/// by milliseconds a minute at most, and a step of Redis' clock is read again at the
/// first `LATE` it causes.
const READ_EVERY: Duration = Duration::from_secs(30);

/// The longest round trip of a reading kept for later calls (a slower one was taken in a
/// slow moment, and would narrow every deadline by half of it): a link 100 ms long keeps
/// its readings, and its calls are not one round trip longer each.
const KEEP_WITHIN: Duration = Duration::from_millis(500);

#[derive(Default)]
pub(super) struct RedisClock {
    /// Redis' time in ms at a moment of ours, and how far either way it may be off (half
    /// the round trip that read it).
    read: Mutex<Option<Reading>>,
}

#[derive(Clone, Copy)]
struct Reading {
    redis_ms: i64,
    at: Instant,
    within_ms: i64,
}

impl RedisClock {
    /// The deadline, in ms on Redis' clock, of a call that began at `began`: read from
    /// Redis first when the last reading is old.
    pub(super) async fn deadline(
        &self,
        conn: &mut ConnectionManager,
        began: Instant,
    ) -> RedisResult<i64> {
        let reading = match self.fresh() {
            Some(reading) => reading,
            None => {
                let sent = Instant::now();
                let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(conn).await?;
                let back = Instant::now();
                let half = (back - sent) / 2;
                let reading = Reading {
                    redis_ms: secs.saturating_mul(1000).saturating_add(micros / 1000),
                    at: sent + half,
                    within_ms: ms(half) + 1,
                };
                // A reading taken in a slow moment (a fork for a save, a slow script) is
                // off by up to half its round trip, which the deadlines give up: used for
                // this call only, not for the next 30 s.
                if back - sent <= KEEP_WITHIN {
                    if let Ok(mut read) = self.read.lock() {
                        *read = Some(reading);
                    }
                }
                reading
            }
        };
        // `began` may come before the reading (a reading made in this call): signed.
        let since_reading = if began >= reading.at {
            ms(began - reading.at)
        } else {
            -ms(reading.at - began)
        };
        Ok(reading
            .redis_ms
            .saturating_add(since_reading)
            .saturating_add(ms(FENCE))
            .saturating_sub(reading.within_ms))
    }

    /// Forgets the reading: a script found late may have met a clock that stepped.
    pub(super) fn forget(&self) {
        if let Ok(mut read) = self.read.lock() {
            *read = None;
        }
    }

    fn fresh(&self) -> Option<Reading> {
        let read = self.read.lock().ok()?;
        read.filter(|r| r.at.elapsed() < READ_EVERY)
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `now_ms()`: Redis' clock, in ms.
pub(super) const NOW_LUA: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"#;

/// Run first by every state script, with the deadline as the last argument (taken off
/// `ARGV`, so that the script's own arguments keep their places): past it, the script
/// answers the error `LATE` having changed nothing. One that finds Redis' clock more than
/// a second before its call began (deadline less `FENCE`) answers `EARLY`, changing
/// nothing: no script runs before it is sent, so Redis' clock went back since it was read,
/// and the deadline would not hold.
/// Needs `NOW_LUA` before it.
pub(super) const FENCE_LUA: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local deadline = tonumber(table.remove(ARGV))
local now = now_ms()
if now > deadline then
  return redis.error_reply('LATE the request reached Redis past its deadline; nothing was changed')
end
if now < deadline - 3000 then
  return redis.error_reply('EARLY Redis clock went back since it was read; nothing was changed')
end
"#;
