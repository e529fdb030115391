//! Price tables: strict validation with errors that name the file, the entry and the field;
//! the built-in table; picking a price for a command.

use std::path::{Path, PathBuf};

use bertbench::cost::{resolve_price, PriceTable, BUILTIN};
use bertbench::error::{exit_code, EXIT_BAD_INPUT};

const GOOD: &str = r#"
[[machine]]
name = "aws-g5.xlarge"
description = "NVIDIA A10G 24 GB, 4 vCPU, on-demand, us-east-1"
usd_per_hour = 1.006
source = "https://aws.amazon.com/ec2/pricing/on-demand/"
date = "2026-06-17"

[[machine]]
name = "laptop"
usd_per_hour = 0
"#;

fn write(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("prices.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Reads `text` as a price file; returns the error message after checking it is an input error
/// (exit code 3) that names the file.
fn rejected(text: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path(), text);
    let err = PriceTable::from_file(&path).expect_err("should be rejected");
    let msg = format!("{err:#}");
    assert_eq!(exit_code(&err), EXIT_BAD_INPUT, "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    msg
}

#[test]
fn a_good_table_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let table = PriceTable::from_file(&write(tmp.path(), GOOD)).unwrap();
    assert_eq!(table.machines.len(), 2);
    assert_eq!(table.machines[0].usd_per_hour, 1.006);
    // An integer price is a price.
    assert_eq!(table.machines[1].usd_per_hour, 0.0);
    assert_eq!(table.machines[1].source, None);
}

#[test]
fn invalid_tables_are_input_errors_naming_entry_and_field() {
    let unknown = rejected(
        "[[machine]]\nname = \"a\"\nusd_per_hour = 1.0\n\n\
         [[machine]]\nname = \"b\"\nusd_per_hr = 2.0\n",
    );
    assert!(unknown.contains("machine #2 ('b')"), "{unknown}");
    assert!(unknown.contains("usd_per_hr"), "{unknown}");

    let negative = rejected("[[machine]]\nname = \"cheap\"\nusd_per_hour = -0.5\n");
    assert!(
        negative.contains("machine #1 ('cheap')") && negative.contains("usd_per_hour"),
        "{negative}"
    );
    let infinite = rejected("[[machine]]\nname = \"x\"\nusd_per_hour = inf\n");
    assert!(infinite.contains("usd_per_hour"), "{infinite}");
    let nan = rejected("[[machine]]\nname = \"x\"\nusd_per_hour = nan\n");
    assert!(nan.contains("usd_per_hour"), "{nan}");

    let duplicate = rejected(
        "[[machine]]\nname = \"gpu\"\nusd_per_hour = 1.0\n\
         [[machine]]\nname = \"gpu\"\nusd_per_hour = 2.0\n",
    );
    assert!(
        duplicate.contains("machine #2 ('gpu')") && duplicate.contains("already used"),
        "{duplicate}"
    );

    let no_price = rejected("[[machine]]\nname = \"gpu\"\n");
    assert!(
        no_price.contains("machine #1 ('gpu')") && no_price.contains("usd_per_hour"),
        "{no_price}"
    );
    let no_name = rejected("[[machine]]\nusd_per_hour = 1.0\n");
    assert!(
        no_name.contains("machine #1") && no_name.contains("name"),
        "{no_name}"
    );
    let empty_name = rejected("[[machine]]\nname = \" \"\nusd_per_hour = 1.0\n");
    assert!(empty_name.contains("`name` is empty"), "{empty_name}");
    let text_price = rejected("[[machine]]\nname = \"a\"\nusd_per_hour = \"1.0\"\n");
    assert!(text_price.contains("machine #1 ('a')"), "{text_price}");

    let bad_date = rejected("[[machine]]\nname = \"a\"\nusd_per_hour = 1.0\ndate = \"June\"\n");
    assert!(
        bad_date.contains("`date`") && bad_date.contains("June"),
        "{bad_date}"
    );

    let syntax = rejected("[[machine]]\nname = \"a\nusd_per_hour = 1.0\n");
    assert!(syntax.contains("not valid TOML"), "{syntax}");
    let top = rejected("[[machines]]\nname = \"a\"\nusd_per_hour = 1.0\n");
    assert!(top.contains("`machines`"), "{top}");
    let empty = rejected("# nothing\n");
    assert!(empty.contains("no [[machine]] entries"), "{empty}");

    let tmp = tempfile::tempdir().unwrap();
    let err = PriceTable::from_file(&tmp.path().join("missing.toml")).unwrap_err();
    assert_eq!(exit_code(&err), EXIT_BAD_INPUT);
    assert!(format!("{err}").contains("missing.toml"));
}

#[test]
fn every_builtin_price_has_a_source_and_a_date() {
    let table = PriceTable::builtin().unwrap();
    assert!(table.machines.len() >= 5);
    for p in &table.machines {
        let source = p.source.as_deref().unwrap_or_default();
        assert!(
            source.starts_with("https://"),
            "{}: source {source:?}",
            p.name
        );
        let date = p.date.as_deref().unwrap_or_default();
        assert!(
            chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok(),
            "{}: date {date:?}",
            p.name
        );
        assert!(p.description.is_some(), "{}", p.name);
        assert!(p.usd_per_hour > 0.0, "{}", p.name);
    }
}

#[test]
fn resolving_a_price() {
    let tmp = tempfile::tempdir().unwrap();
    let file = write(tmp.path(), GOOD);
    let file = file.to_str().unwrap();

    // Nothing asked: no price.
    assert_eq!(resolve_price(None, None, None).unwrap(), None);
    // --price-per-hour wins over a table.
    let p = resolve_price(Some(2.5), Some(file), Some("laptop"))
        .unwrap()
        .unwrap();
    assert_eq!((p.name.as_str(), p.usd_per_hour), ("--price-per-hour", 2.5));
    assert_eq!(
        exit_code(&resolve_price(Some(-1.0), None, None).unwrap_err()),
        3
    );
    assert_eq!(
        exit_code(&resolve_price(Some(f64::NAN), None, None).unwrap_err()),
        3
    );

    // Exact names (any case) and unique parts of names.
    let pick = |m: &str| resolve_price(None, Some(file), Some(m));
    assert_eq!(pick("AWS-G5.XLARGE").unwrap().unwrap().usd_per_hour, 1.006);
    assert_eq!(pick("g5").unwrap().unwrap().name, "aws-g5.xlarge");
    let unknown = format!("{:#}", pick("h100").unwrap_err());
    assert!(
        unknown.contains(file)
            && unknown.contains("h100")
            && unknown.contains("aws-g5.xlarge, laptop"),
        "{unknown}"
    );
    // Two machines and no --machine: which one?
    let which = resolve_price(None, Some(file), None).unwrap_err();
    assert_eq!(exit_code(&which), 3);
    assert!(format!("{which}").contains("--machine"), "{which}");

    // The built-in table only when asked for.
    let needs_table = resolve_price(None, None, Some("g5")).unwrap_err();
    assert!(
        format!("{needs_table}").contains("--prices"),
        "{needs_table}"
    );
    let g5 = resolve_price(None, Some(BUILTIN), Some("aws-g5.xlarge"))
        .unwrap()
        .unwrap();
    assert!(g5.source.is_some() && g5.date.is_some());
    let ambiguous = format!(
        "{}",
        resolve_price(None, Some(BUILTIN), Some("h100")).unwrap_err()
    );
    assert!(
        ambiguous.starts_with("builtin: machine 'h100' is ambiguous"),
        "{ambiguous}"
    );

    // A table of one machine needs no --machine.
    let one = write(
        tmp.path(),
        "[[machine]]\nname = \"only\"\nusd_per_hour = 0.5\n",
    );
    let p = resolve_price(None, Some(one.to_str().unwrap()), None)
        .unwrap()
        .unwrap();
    assert_eq!(p.name, "only");
}
