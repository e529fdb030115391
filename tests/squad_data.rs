//! Reading SQuAD files from disk: gzip or plain, and errors that name the file.

use std::io::Write;

use bertbench::error::{exit_code, EXIT_BAD_INPUT};
use bertbench::squad::read_dataset;

const SMALL: &str = r#"{"version": "1.1", "data": [{"title": "Paris", "paragraphs": [
    {"context": "Paris is the capital of France.", "qas": [
        {"id": "p1", "question": "Capital?", "answers": [{"text": "Paris", "answer_start": 0}]}
    ]}]}]}"#;

#[test]
fn plain_and_gzip_files_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("small.json");
    std::fs::write(&plain, SMALL).unwrap();
    // Compressed but named without .gz: recognised by content.
    let gz = dir.path().join("small-compressed.json");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(SMALL.as_bytes()).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    let a = read_dataset(&plain).unwrap();
    let b = read_dataset(&gz).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.articles[0].paragraphs[0].qas[0].id, "p1");
}

#[test]
fn file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "truncated.json.gz",
            &[0x1f, 0x8b, 0x08, 0x00][..],
            "not a valid gzip file",
        ),
        (
            "broken.json",
            b"{\"version\": \"1.1\", \"data\": [",
            "not valid JSON",
        ),
        (
            "nodata.json",
            b"{\"version\": \"1.1\"}",
            "top level: missing field `data`",
        ),
    ];
    for (name, bytes, expect) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let e = read_dataset(&path).unwrap_err();
        assert_eq!(exit_code(&e), EXIT_BAD_INPUT);
        let m = format!("{e:#}");
        assert!(m.starts_with(&format!("{}: ", path.display())), "{m}");
        assert!(m.contains(expect), "{m}");
    }
    let e = read_dataset(&dir.path().join("absent.json")).unwrap_err();
    assert_eq!(exit_code(&e), EXIT_BAD_INPUT);
    assert!(format!("{e}").contains("absent.json: cannot read"));
}
