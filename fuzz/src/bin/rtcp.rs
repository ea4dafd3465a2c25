//! AFL++ target `rtcp`: see `switchboard_fuzz::rtcp`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        switchboard_fuzz::rtcp(data);
    });
}
