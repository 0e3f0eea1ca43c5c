//! Results on stdout: a reader that closes the pipe early (`snapblk bench | head`) ends the
//! output, not the process with a panic as `println!` would.

use std::fmt::Display;
use std::io::Write;

/// Prints `text` and a newline to stdout, ignoring a closed stdout.
pub fn line(text: impl Display) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// Prints `text` as is to stdout, ignoring a closed stdout.
pub fn text(text: impl Display) {
    let _ = write!(std::io::stdout().lock(), "{text}");
}
