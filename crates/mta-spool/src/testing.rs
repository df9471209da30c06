//! Helpers shared by the crate's crash-test child binary and its tests. Not a stable API.

/// Largest body made by [`crash_body`].
pub const CRASH_BODY_MAX: usize = 200 * 1024;

/// The deterministic body number `counter` of crash round `seed`: 1 byte to [`CRASH_BODY_MAX`] bytes.
pub fn crash_body(seed: u64, counter: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ counter.wrapping_add(0x2545_F491_4F6C_DD1D);
    let len = 1 + (splitmix(&mut state) % CRASH_BODY_MAX as u64) as usize;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&splitmix(&mut state).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// splitmix64: a tiny, good-enough deterministic generator.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
