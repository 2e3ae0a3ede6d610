//! The flood guard: a per-CPU count of new flows per one-second window. Above the configured
//! rate, new flows are still balanced but not recorded in the flow table, so a flood of new
//! flows (spoofed SYNs, a UDP scan) cannot push established flows out of it (as Katran does
//! above its `max_conn_rate`).

/// One nanosecond-clock second.
pub const WINDOW_NS: u64 = 1_000_000_000;

/// ICMP "fragmentation needed" / "packet too big" answers a CPU sends per window at most (the
/// same window, counted in `ICMP_GUARD`); beyond it a too-big packet is dropped and counted.
/// Linux's own limit on the ICMP messages a host sends (`icmp_msgs_per_sec`) is 1,000 a second
/// too: a client needs one answer per connection to learn its path MTU.
pub const ICMP_ANSWERS_PER_SECOND: u32 = 1_000;

/// This CPU's window (`FLOOD_GUARD`, a one-entry per-CPU array; `ICMP_GUARD` for ICMP answers).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FloodWindow {
    /// Start of the current window (`CLOCK_MONOTONIC` ns).
    pub start_ns: u64,
    /// New flows counted in it, admitted or not.
    pub new_flows: u64,
}

impl FloodWindow {
    /// Counts one new flow at `now_ns`; whether it may take a flow-table entry: at most
    /// `rate` per window. `rate` 0 is the guard switched off (every flow admitted, nothing
    /// counted).
    #[inline(always)]
    pub fn admit(&mut self, rate: u32, now_ns: u64) -> bool {
        if rate == 0 {
            return true;
        }
        if now_ns.wrapping_sub(self.start_ns) >= WINDOW_NS {
            self.start_ns = now_ns;
            self.new_flows = 0;
        }
        self.new_flows += 1;
        self.new_flows <= u64::from(rate)
    }
}

const _: () = assert!(core::mem::size_of::<FloodWindow>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_the_rate_per_window_then_refuses() {
        let mut w = FloodWindow::default();
        let t0 = 5 * WINDOW_NS;
        for i in 0..3 {
            assert!(w.admit(3, t0 + i), "flow {i}");
        }
        assert!(!w.admit(3, t0 + 10));
        assert!(!w.admit(3, t0 + WINDOW_NS - 1));
        // A new window admits again.
        assert!(w.admit(3, t0 + WINDOW_NS));
        assert_eq!(w.new_flows, 1);
    }

    #[test]
    fn rate_zero_is_off() {
        let mut w = FloodWindow::default();
        for i in 0..1_000 {
            assert!(w.admit(0, i));
        }
        assert_eq!(w, FloodWindow::default());
    }
}
