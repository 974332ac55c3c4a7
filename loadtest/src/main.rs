//! herald's load generator. The scenarios arrive with issue 3; this placeholder keeps the
//! workspace member in place so its dependencies stay out of the server crate.

fn main() {
    eprintln!("loadtest: no scenarios yet (see issue 3)");
    std::process::exit(2);
}
