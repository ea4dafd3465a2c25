//! AFL++ target `webhook`: see `switchboard_fuzz::webhook`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        switchboard_fuzz::webhook(data);
    });
}
