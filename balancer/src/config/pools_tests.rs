//! `[[pool]]`, `[[route]]` and `[dns]`: the contract's example, the
//! defaults pools take, and every error, each naming its line and key.

use super::super::{Config, Path, Strategy};
use super::*;

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, Path::new("lb.toml")).map_err(|e| e.to_string())
}

const MINIMAL: &str = "listen = \"127.0.0.1:8080\"\nbackends = [\"10.0.0.11:8000\"]\n";

#[test]
fn spans() {
    let text = format!("{MINIMAL}\n[[pool]]\nname = \"x\"\n\n[[route]]\nhost = \"a\"\npool = \"y\"\n[[pool]]\nbackends = []\n");
    println!("{}", parse(&text).unwrap_err());
    let text = format!("{MINIMAL}\n[[pool]]\nbackends = [\"1.2.3.4:5\"]\n\n[[route]]\nhost = \"a\"\npool = \"y\"\n");
    println!("{}", parse(&text).unwrap_err());
    let text = format!("{MINIMAL}\n[[pool]]\nname = \"x\"\nbackends = [\"1.2.3.4:5\"]\n\n[[route]]\n\n\npool = \"x\"\n");
    println!("{}", parse(&text).unwrap_err());
}
