//! AFL++ target `dtmf`: see `switchboard_fuzz::dtmf`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        switchboard_fuzz::dtmf(data);
    });
}
