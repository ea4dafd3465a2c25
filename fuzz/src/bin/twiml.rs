//! AFL++ target `twiml`: see `switchboard_fuzz::twiml`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        switchboard_fuzz::twiml(data);
    });
}
