//! Line-protocol encoding of arbitrary measurement, tag and field strings: never panics, one
//! line per point, and every unescaped separator is where the format puts one.
#![no_main]
use fathom_monitor::influx::{Field, Point};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parts: Vec<&str> = text.splitn(5, '\u{1f}').collect();
    let get = |i: usize| parts.get(i).copied().unwrap_or("x").to_string();
    let point = Point {
        measurement: get(0),
        tags: vec![(get(1), get(2))],
        fields: vec![(get(3), Field::Str(get(4))), ("n".into(), Field::Float(1.5))],
        time_ns: 1,
    };
    if let Some(line) = point.encode() {
        assert!(!line.contains('\n'), "one line: {line:?}");
        // outside string fields, unescaped spaces separate exactly three sections
        // (quotes are literal in the measurement and tags; they delimit string field values)
        let mut sections = 1;
        let (mut escaped, mut quoted, mut previous) = (false, false, ' ');
        for c in line.chars() {
            let was_escaped = escaped;
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' if quoted => quoted = false,
                '"' if sections == 2 && previous == '=' => quoted = true,
                ' ' if !quoted => sections += 1,
                _ => {}
            }
            previous = if was_escaped { '\0' } else { c };
        }
        assert_eq!(sections, 3, "{line:?}");
    }
});
