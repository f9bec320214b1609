//! Power of two choices over sessions, on a per-selector xorshift generator: shared by the
//! strategies that sample above [`FULL_SCAN_MAX`](crate::FULL_SCAN_MAX) sessions.

use mcp_pool_traits::SessionView;

/// xorshift64: statistical quality is all power of two choices needs; no allocation, no
/// shared state.
#[derive(Debug, Clone)]
pub(crate) struct XorShift(u64);

impl Default for XorShift {
    fn default() -> Self {
        Self(0x9E37_79B9_7F4A_7C15)
    }
}

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Two distinct random sessions (a sample of one session twice could pick the most
    /// loaded); of those with capacity, `b` when `prefer_b(a, b)` or `a` has none, else `a`.
    /// `None` when neither has capacity: the caller scans exactly instead. Needs at least two
    /// sessions.
    pub(crate) fn two_choices(
        &mut self,
        sessions: &[SessionView],
        prefer_b: impl FnOnce(&SessionView, &SessionView) -> bool,
    ) -> Option<usize> {
        let n = sessions.len() as u64;
        let a = (self.next() % n) as usize;
        let b = (a + 1 + (self.next() % (n - 1)) as usize) % sessions.len();
        match (sessions[a].has_capacity(), sessions[b].has_capacity()) {
            (true, true) if prefer_b(&sessions[a], &sessions[b]) => Some(b),
            (true, _) => Some(a),
            (false, true) => Some(b),
            (false, false) => None,
        }
    }
}
