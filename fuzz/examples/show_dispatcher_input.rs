//! Prints the steps a `dispatcher` target input stands for, to read a
//! crash or a seed:
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example show_dispatcher_input -- FILE

use arbitrary::{Arbitrary, Unstructured};
use hushgate_fuzz::dispatcher::Input;

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: show_dispatcher_input FILE");
    let data = std::fs::read(&path).expect("a readable file");
    match Input::arbitrary_take_rest(Unstructured::new(&data)) {
        Ok(input) => {
            println!("load {} window {}", input.load, input.window);
            for (i, op) in input.ops.iter().enumerate() {
                println!("{i:3} {op:?}");
            }
        }
        Err(e) => println!("not an input: {e}"),
    }
}
