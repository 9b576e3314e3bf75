// SPDX-License-Identifier: MPL-2.0

//! A screenshot of a running viewer with headless chromium, as the README's image is made:
//!
//! ```sh
//! scripts/run.sh --viewer &          # a live pipeline and the viewer on 127.0.0.1:8080
//! cargo run --manifest-path viewer/Cargo.toml --example screenshot -- \
//!     http://127.0.0.1:8080/ viewer/screenshot.png 30
//! ```
//!
//! Arguments: the page's URL, the PNG to write, and how many seconds to let the page run
//! after its first frame is drawn (the count chart fills one point per second; default 2).

#[path = "../tests/common/browser.rs"]
#[allow(dead_code)]
mod browser;

use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(url), Some(out)) = (args.first(), args.get(1)) else {
        eprintln!("usage: screenshot URL OUT.png [SECONDS]");
        std::process::exit(2);
    };
    let settle: u64 = args.get(2).map_or(2, |s| s.parse().expect("SECONDS"));
    let mut page = browser::Browser::open(url, 1400, 900);
    page.wait_for(
        "a frame",
        "document.querySelector('.source .image').complete && \
         document.querySelectorAll('.source .box').length > 0",
        "document.body.innerText",
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_secs(settle));
    std::fs::write(out, page.screenshot()).expect("write the screenshot");
    eprintln!("wrote {out}");
}
