//! Wall-clock time as the protocol counts it: whole seconds (JWT `iat`, `exp`, `auth_time`) and
//! milliseconds (hold and resume expiry) since the Unix epoch. A clock before 1970 reads as 0.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch at `t`.
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    unix_secs(SystemTime::now())
}

/// Milliseconds since the epoch, now.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
