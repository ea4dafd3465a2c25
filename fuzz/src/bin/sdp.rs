//! AFL++ target `sdp`: see `switchboard_fuzz::sdp`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        switchboard_fuzz::sdp(data);
    });
}
