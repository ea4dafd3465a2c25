//! AFL++ target `liquid`: see `switchboard_fuzz::liquid`.
//!
//! `fuzz_nohook!`: the library catches panics inside the `liquid` crate (a template error),
//! so a caught panic must not abort; one that escapes still aborts (afl.rs's catch_unwind).

fn main() {
    afl::fuzz_nohook!(|data: &[u8]| {
        switchboard_fuzz::liquid(data);
    });
}
