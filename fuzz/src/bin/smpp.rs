//! AFL++ target `smpp`: see `switchboard_fuzz::smpp`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        switchboard_fuzz::smpp(data);
    });
}
