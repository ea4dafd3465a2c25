//! AFL++ target `sip_parse`: see `switchboard_fuzz::sip_parse`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        switchboard_fuzz::sip_parse(data);
    });
}
