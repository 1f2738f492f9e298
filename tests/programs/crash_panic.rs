// A Rust panic, built with -C panic=abort so that the process aborts and dumps a core.
#[inline(never)]
fn parse_port(text: &str) -> u16 {
    match text.parse::<u16>() {
        Ok(port) => port,
        Err(_) => panic!("invalid port number in configuration"),
    }
}

fn main() {
    let text = std::env::args().nth(1).unwrap_or_else(|| "http".to_string());
    std::process::exit(parse_port(&text) as i32);
}
