//! When the loop must wake up for the next raft tick.

use std::time::Duration;

use crate::types::{duration_nanos, BootInstant};

/// Mirrors the core's tick phase: `LogCore::tick` runs one raft tick per whole interval elapsed
/// since the instant the core was created (and never more than real time allows, see
/// `LogCore::tick`), so the next tick is due at the next multiple of the interval after that
/// origin. Waking exactly then keeps ticks from being late by a whole loop period.
#[derive(Debug, Clone)]
pub(crate) struct TickSchedule {
    origin: BootInstant,
    interval: u64,
}

impl TickSchedule {
    pub(crate) fn new(origin: BootInstant, interval: Duration) -> TickSchedule {
        TickSchedule {
            origin,
            interval: duration_nanos(interval).max(1),
        }
    }

    /// The first tick instant strictly after `now`.
    pub(crate) fn next_after(&self, now: BootInstant) -> BootInstant {
        let since = now.0.saturating_sub(self.origin.0);
        let k = since / self.interval + 1;
        BootInstant(
            self.origin
                .0
                .saturating_add(k.saturating_mul(self.interval)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> BootInstant {
        BootInstant(n * 1_000_000)
    }

    #[test]
    fn next_tick_is_the_next_multiple_after_the_origin() {
        let s = TickSchedule::new(ms(1000), Duration::from_millis(100));
        assert_eq!(s.next_after(ms(1000)), ms(1100));
        assert_eq!(s.next_after(ms(1099)), ms(1100));
        assert_eq!(s.next_after(ms(1100)), ms(1200));
        assert_eq!(s.next_after(ms(5550)), ms(5600));
        // A clock reading before the origin (cannot happen with BOOTTIME) still yields a future tick.
        assert_eq!(s.next_after(ms(10)), ms(1100));
    }
}
