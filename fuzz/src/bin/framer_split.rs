//! The framer's events (and its error) do not depend on how the input is split into reads:
//! the whole input against cut points drawn from the first 4 bytes, and byte by byte.
use fedgate_fuzz::{cuts, frame, limits};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if data.len() < 4 {
            return;
        }
        let (seed, input) = data.split_at(4);
        let whole = frame(input, &[], limits());
        let split = frame(input, &cuts(seed, input.len()), limits());
        assert_eq!(whole, split, "split at {:?}", cuts(seed, input.len()));
        let bytewise: Vec<usize> = (1..input.len()).collect();
        assert_eq!(whole, frame(input, &bytewise, limits()), "byte by byte");
    });
}
