//! The project-file loader never panics: any text is a project or a list of problems.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = fathom_project::parse(text);
    }
});
