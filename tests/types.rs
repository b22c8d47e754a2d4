//! What every Postgres type becomes in JSON (docs/events.md, "Types"), in
//! text mode and in binary mode, against a real server: one row of
//! `CASES` per value (column type, SQL literal, expected JSON, and whether
//! binary mode decodes it or passes its bytes on). All values go into one
//! table as one INSERT, streamed by two tenants on the same database, one
//! of them with `binary = true`.

mod common;

use common::*;
use serde_json::{json, Value};

/// What binary mode gives for a value.
#[derive(Clone, Copy, PartialEq)]
enum Binary {
    /// Exactly what text mode gives.
    Same,
    /// `{"binary_base64": <the type's send function output>}`: no decoder.
    Raw,
}
use Binary::{Raw, Same};

/// Types the cases use that are not built in.
const CUSTOM_TYPES: &str = r#"
create extension citext;
create extension hstore;
create extension ltree;
create type mood as enum ('happy', 'sad', 'with space');
create domain posint as int4 check (value > 0);
create domain shorttext as text;
create domain intlist as int4[];
create domain stamp as timestamptz;
create type pair as (n int, s text, t timestamptz);
create type nested as (p pair, tags text[], m mood);
create type floatrange as range (subtype = float8);
create domain pairdomain as pair;
create domain moods as mood[];
"#;

/// (column type, SQL literal, expected JSON, binary mode)
fn cases() -> Vec<(&'static str, &'static str, Value, Binary)> {
    vec![
        // integers and oid: numbers
        ("int2", "-32768", json!(-32768), Same),
        ("int4", "2147483647", json!(2147483647), Same),
        (
            "int8",
            "9223372036854775807",
            json!(9223372036854775807i64),
            Same,
        ),
        ("int8", "-9223372036854775808", json!(i64::MIN), Same),
        ("oid", "4294967295", json!(4294967295u32), Same),
        // numeric: strings with every digit
        ("numeric", "3.14", json!("3.14"), Same),
        (
            "numeric",
            "123456789012345678901234567890.000000000000000001",
            json!("123456789012345678901234567890.000000000000000001"),
            Same,
        ),
        ("numeric", "1e-20", json!("0.00000000000000000001"), Same),
        ("numeric", "-0.00012", json!("-0.00012"), Same),
        ("numeric(10,4)", "1.5", json!("1.5000"), Same),
        ("numeric", "0", json!("0"), Same),
        (
            "numeric",
            "1e30",
            json!("1000000000000000000000000000000"),
            Same,
        ),
        ("numeric", "'NaN'", json!("NaN"), Same),
        ("numeric", "'Infinity'", json!("Infinity"), Same),
        ("numeric", "'-Infinity'", json!("-Infinity"), Same),
        // floats: numbers, the special values as strings
        ("float4", "1.5", json!(1.5), Same),
        ("float4", "0.1", json!(0.1), Same),
        ("float4", "'NaN'", json!("NaN"), Same),
        ("float4", "'-Infinity'", json!("-Infinity"), Same),
        ("float8", "0.1", json!(0.1), Same),
        ("float8", "1e308", json!(1e308), Same),
        ("float8", "-2.5e-300", json!(-2.5e-300), Same),
        ("float8", "'Infinity'", json!("Infinity"), Same),
        ("float8", "'NaN'", json!("NaN"), Same),
        // bool
        ("bool", "true", json!(true), Same),
        ("bool", "false", json!(false), Same),
        // text types
        (
            "text",
            r#"E'line\nbreak "quoted" \\ back ünïcode'"#,
            json!("line\nbreak \"quoted\" \\ back ünïcode"),
            Same,
        ),
        ("text", "''", json!(""), Same),
        ("varchar(10)", "'short'", json!("short"), Same),
        ("char(5)", "'ab'", json!("ab   "), Same),
        ("\"char\"", "'x'", json!("x"), Same),
        ("name", "'pg_class'", json!("pg_class"), Same),
        ("citext", "'MiXeD'", json!("MiXeD"), Raw),
        // bytea: hex text as Postgres prints it
        ("bytea", r"'\xdeadbeef'", json!("\\xdeadbeef"), Same),
        ("bytea", "''", json!("\\x"), Same),
        // json and jsonb: embedded (json as written, jsonb normalised)
        (
            "json",
            r#"'{"b": 1,  "a": [true, null]}'"#,
            json!({"b": 1, "a": [true, null]}),
            Same,
        ),
        (
            "jsonb",
            r#"'{"b": 1, "a": [true, null, 1.50]}'"#,
            json!({"a": [true, null, 1.50], "b": 1}),
            Same,
        ),
        ("jsonb", r#"'"text"'"#, json!("text"), Same),
        // uuid
        (
            "uuid",
            "'6ECD8C99-4036-403D-BF84-CF8400F67836'",
            json!("6ecd8c99-4036-403d-bf84-cf8400f67836"),
            Same,
        ),
        // dates and times: ISO 8601
        ("date", "'2026-11-28'", json!("2026-11-28"), Same),
        ("date", "'infinity'", json!("infinity"), Same),
        ("date", "'-infinity'", json!("-infinity"), Same),
        ("date", "'0044-03-15 BC'", json!("-0043-03-15"), Same),
        ("time", "'03:14:02.5'", json!("03:14:02.5"), Same),
        ("time", "'24:00'", json!("24:00:00"), Same),
        ("timetz", "'03:14:02+05:30'", json!("03:14:02+05:30"), Same),
        (
            "timetz",
            "'03:14:02.000001-08'",
            json!("03:14:02.000001-08"),
            Same,
        ),
        (
            "timestamp",
            "'2026-11-28 03:14:02.5'",
            json!("2026-11-28T03:14:02.5"),
            Same,
        ),
        ("timestamp", "'infinity'", json!("infinity"), Same),
        (
            "timestamp",
            "'0044-03-15 12:00 BC'",
            json!("-0043-03-15T12:00:00"),
            Same,
        ),
        (
            "timestamptz",
            "'2026-11-28 04:14:02.123456+01'",
            json!("2026-11-28T03:14:02.123456Z"),
            Same,
        ),
        ("timestamptz", "'-infinity'", json!("-infinity"), Same),
        (
            "timestamptz",
            "'0001-01-01 00:00+00 BC'",
            json!("0000-01-01T00:00:00Z"),
            Same,
        ),
        (
            "timestamptz",
            "'10000-01-01 00:00+00'",
            json!("10000-01-01T00:00:00Z"),
            Same,
        ),
        // interval: ISO 8601 durations (IntervalStyle=iso_8601)
        (
            "interval",
            "'1 year 2 months 3 days 4 hours 5 minutes 6.5 seconds'",
            json!("P1Y2M3DT4H5M6.5S"),
            Same,
        ),
        ("interval", "'-1 day'", json!("P-1D"), Same),
        ("interval", "'0'", json!("PT0S"), Same),
        (
            "interval",
            "'-1 month -1.5 seconds'",
            json!("P-1MT-1.5S"),
            Same,
        ),
        ("interval", "'1 day -1 hour'", json!("P1DT-1H"), Same),
        (
            "interval",
            "'-0.000001 seconds'",
            json!("PT-0.000001S"),
            Same,
        ),
        // network types
        ("inet", "'192.168.0.1/24'", json!("192.168.0.1/24"), Same),
        ("inet", "'::1'", json!("::1"), Same),
        (
            "inet",
            "'2001:DB8:0:0:1::1/64'",
            json!("2001:db8::1:0:0:1/64"),
            Same,
        ),
        ("inet", "'::ffff:1.2.3.4'", json!("::ffff:1.2.3.4"), Raw),
        ("cidr", "'2001:db8::/32'", json!("2001:db8::/32"), Same),
        ("cidr", "'10.0.0.0/8'", json!("10.0.0.0/8"), Same),
        (
            "macaddr",
            "'08-00-2B-01-02-03'",
            json!("08:00:2b:01:02:03"),
            Same,
        ),
        (
            "macaddr8",
            "'08:00:2b:01:02:03:04:05'",
            json!("08:00:2b:01:02:03:04:05"),
            Same,
        ),
        // money: text, as lc_monetary prints it (C here)
        ("money", "1234.5", json!("$1,234.50"), Raw),
        // bit strings
        ("bit(4)", "B'1010'", json!("1010"), Same),
        ("varbit", "B'101'", json!("101"), Same),
        ("varbit", "B'1111000011'", json!("1111000011"), Same),
        ("varbit", "B''", json!(""), Same),
        // text search
        ("tsvector", "'a fat cat'", json!("'a' 'cat' 'fat'"), Raw),
        ("tsquery", "'fat & rat'", json!("'fat' & 'rat'"), Raw),
        // geometric types: text
        ("point", "'(1,2)'", json!("(1,2)"), Raw),
        ("line", "'{1,2,3}'", json!("{1,2,3}"), Raw),
        ("lseg", "'[(0,0),(1,1)]'", json!("[(0,0),(1,1)]"), Raw),
        ("box", "'(0,0),(1,1)'", json!("(1,1),(0,0)"), Raw),
        ("path", "'[(0,0),(1,1)]'", json!("[(0,0),(1,1)]"), Raw),
        (
            "polygon",
            "'((0,0),(1,1),(1,0))'",
            json!("((0,0),(1,1),(1,0))"),
            Raw,
        ),
        ("circle", "'<(0,0),1>'", json!("<(0,0),1>"), Raw),
        // xml, pg_lsn, internal types: text
        ("xml", "'<a>b &amp; c</a>'", json!("<a>b &amp; c</a>"), Same),
        ("pg_lsn", "'0/16B3748'", json!("0/16B3748"), Same),
        ("pg_lsn", "'16/B374D848'", json!("16/B374D848"), Same),
        ("regclass", "'pg_class'", json!("pg_class"), Raw),
        ("xid", "'5'", json!("5"), Same),
        ("cid", "'7'", json!("7"), Same),
        (
            "xid8",
            "'18446744073709551615'",
            json!("18446744073709551615"),
            Same,
        ),
        ("\"char\"", "'\\351'", json!("\\351"), Same),
        ("tid", "'(0,1)'", json!("(0,1)"), Same),
        ("int2vector", "'1 2'", json!("1 2"), Raw),
        // ranges and multiranges: objects
        (
            "int4range",
            "'[1,5)'",
            json!({"lower": 1, "upper": 5, "lower_inc": true, "upper_inc": false}),
            Same,
        ),
        (
            "int4range",
            "'(1,5]'",
            json!({"lower": 2, "upper": 6, "lower_inc": true, "upper_inc": false}),
            Same,
        ),
        (
            "numrange",
            "'(,2.5]'",
            json!({"lower": null, "upper": "2.5", "lower_inc": false, "upper_inc": true}),
            Same,
        ),
        (
            "tstzrange",
            "'[2026-01-01 00:00+00,infinity)'",
            json!({"lower": "2026-01-01T00:00:00Z", "upper": "infinity", "lower_inc": true, "upper_inc": false}),
            Same,
        ),
        ("daterange", "'empty'", json!({"empty": true}), Same),
        (
            "int8multirange",
            "'{[1,3), [5,7)}'",
            json!([
                {"lower": 1, "upper": 3, "lower_inc": true, "upper_inc": false},
                {"lower": 5, "upper": 7, "lower_inc": true, "upper_inc": false}
            ]),
            Same,
        ),
        ("datemultirange", "'{}'", json!([]), Same),
        // enums, domains, composites, custom ranges (from the catalog)
        ("mood", "'with space'", json!("with space"), Same),
        ("posint", "5", json!(5), Same),
        ("shorttext", "'x'", json!("x"), Same),
        ("intlist", "'{1,2}'", json!([1, 2]), Same),
        (
            "stamp",
            "'2026-11-28 03:14:02+00'",
            json!("2026-11-28T03:14:02Z"),
            Same,
        ),
        (
            "pair",
            r#"'(1,"a, \"b\"",)'"#,
            json!({"n": 1, "s": "a, \"b\"", "t": null}),
            Same,
        ),
        (
            "nested",
            "row(row(2, '', '2026-01-01 00:00+00')::pair, array['x y', null], 'sad')",
            json!({"p": {"n": 2, "s": "", "t": "2026-01-01T00:00:00Z"}, "tags": ["x y", null], "m": "sad"}),
            Same,
        ),
        (
            "floatrange",
            "'[1.5,2.5]'",
            json!({"lower": 1.5, "upper": 2.5, "lower_inc": true, "upper_inc": true}),
            Same,
        ),
        (
            "floatmultirange",
            "'{[1.5,2.5], (3,)}'",
            json!([
                {"lower": 1.5, "upper": 2.5, "lower_inc": true, "upper_inc": true},
                {"lower": 3.0, "upper": null, "lower_inc": false, "upper_inc": false}
            ]),
            Same,
        ),
        (
            "pairdomain",
            "'(7,x,)'",
            json!({"n": 7, "s": "x", "t": null}),
            Same,
        ),
        ("moods", "'{sad}'", json!(["sad"]), Same),
        ("hstore", r#"'a=>1'"#, json!("\"a\"=>\"1\""), Raw),
        ("ltree", "'a.b.c'", json!("a.b.c"), Raw),
        // arrays: of any element type, n-dimensional, NULLs, quoting, empty
        (
            "int4[]",
            "'{{1,2},{3,NULL}}'",
            json!([[1, 2], [3, null]]),
            Same,
        ),
        (
            "int4[]",
            "'{{{1,2}},{{3,4}}}'",
            json!([[[1, 2]], [[3, 4]]]),
            Same,
        ),
        ("int4[]", "'{}'", json!([]), Same),
        ("int4[]", "'[0:1]={5,6}'", json!([5, 6]), Same),
        (
            "text[]",
            r#"array['a,b', 'c"d', 'e\f', '{g}', 'h i', 'NULL', '', null, ' ']"#,
            json!(["a,b", "c\"d", "e\\f", "{g}", "h i", "NULL", "", null, " "]),
            Same,
        ),
        ("varchar[]", "'{x}'", json!(["x"]), Same),
        ("bool[]", "'{t,f,NULL}'", json!([true, false, null]), Same),
        (
            "int8[]",
            "'{9223372036854775807}'",
            json!([9223372036854775807i64]),
            Same,
        ),
        ("numeric[]", "'{1.50,NaN}'", json!(["1.50", "NaN"]), Same),
        (
            "float8[]",
            "'{0.1,Infinity}'",
            json!([0.1, "Infinity"]),
            Same,
        ),
        (
            "float4[]",
            "'{0.1,-Infinity}'",
            json!([0.1, "-Infinity"]),
            Same,
        ),
        (
            "jsonb[]",
            r#"array['{"a": 1}'::jsonb, '[1, "x"]']"#,
            json!([{"a": 1}, [1, "x"]]),
            Same,
        ),
        (
            "json[]",
            r#"array['{"z":0}'::json]"#,
            json!([{"z": 0}]),
            Same,
        ),
        (
            "uuid[]",
            "'{6ecd8c99-4036-403d-bf84-cf8400f67836}'",
            json!(["6ecd8c99-4036-403d-bf84-cf8400f67836"]),
            Same,
        ),
        (
            "timestamptz[]",
            r#"'{"2026-11-28 03:14:02+00",infinity}'"#,
            json!(["2026-11-28T03:14:02Z", "infinity"]),
            Same,
        ),
        (
            "timestamp[]",
            r#"'{"2026-11-28 03:14:02.25"}'"#,
            json!(["2026-11-28T03:14:02.25"]),
            Same,
        ),
        (
            "date[]",
            "'{2026-11-28,NULL}'",
            json!(["2026-11-28", null]),
            Same,
        ),
        ("bytea[]", r#"array['\xde'::bytea]"#, json!(["\\xde"]), Same),
        ("text[]", "array['x']::text[]", json!(["x"]), Same),
        ("interval[]", "'{1 day}'", json!(["P1D"]), Same),
        (
            "box[]",
            "array['(0,0),(1,1)'::box, '(2,2),(3,3)']",
            json!(["(1,1),(0,0)", "(3,3),(2,2)"]),
            Raw,
        ),
        ("inet[]", "'{10.0.0.1}'", json!(["10.0.0.1"]), Same),
        (
            "int4range[]",
            r#"'{"[1,2)",empty}'"#,
            json!([{"lower": 1, "upper": 2, "lower_inc": true, "upper_inc": false}, {"empty": true}]),
            Same,
        ),
        (
            "mood[]",
            "'{happy,\"with space\"}'",
            json!(["happy", "with space"]),
            Same,
        ),
        ("posint[]", "'{1,2}'", json!([1, 2]), Same),
        (
            "pair[]",
            "array[row(1, 'a', null)::pair, null]",
            json!([{"n": 1, "s": "a", "t": null}, null]),
            Same,
        ),
        ("citext[]", "'{A,b}'", json!(["A", "b"]), Raw),
        // NULL of any type
        ("numeric", "null", Value::Null, Same),
        ("pair", "null", Value::Null, Same),
    ]
}

#[test]
fn every_type_in_text_and_binary_mode() {
    let cases = cases();
    let db = TenantDb::start();
    db.sql(CUSTOM_TYPES);
    let columns: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(i, (ty, _, _, _))| format!("c{i} {ty}"))
        .collect();
    db.sql(&format!(
        "create table typed (id int primary key, {})",
        columns.join(", ")
    ));

    // What binary mode must pass on for types it does not decode: the bytes
    // of the type's send function, straight from Postgres.
    let raw: Vec<Option<Value>> = cases
        .iter()
        .map(|(ty, literal, _, binary)| {
            (*binary == Raw && *literal != "null").then(|| {
                let send = db.sql(&format!(
                    "select typsend::text from pg_type where oid = '{ty}'::regtype"
                ));
                let base64 = db.sql(&format!(
                    "select translate(encode({}(({literal})::{ty}), 'base64'), E'\\n', '')",
                    send.trim()
                ));
                json!({ "binary_base64": base64.trim() })
            })
        })
        .collect();

    let dir = TempDir::new("types");
    let config = config_file(
        &dir,
        &db,
        &[
            ("text", "\"public.typed\"", ""),
            ("binary", "\"public.typed\"", "binary = true\n"),
        ],
    );
    let run = Walcast::spawn(&config, &["run"]);
    run.wait_log("streaming tenant=", 2);
    let literals: Vec<&str> = cases.iter().map(|c| c.1).collect();
    db.sql(&format!(
        "insert into typed values (1, {})",
        literals.join(", ")
    ));
    let events = run.events(2);
    let by_tenant = |tenant: &str| {
        events
            .iter()
            .find(|e| e["tenant"] == tenant)
            .unwrap_or_else(|| panic!("no event of tenant {tenant}: {events:#?}"))
            .clone()
    };
    let (text, binary) = (by_tenant("text"), by_tenant("binary"));
    let mut wrong = Vec::new();
    for (i, (ty, literal, expected, _)) in cases.iter().enumerate() {
        let column = format!("c{i}");
        let expected_binary = raw[i].as_ref().unwrap_or(expected);
        for (mode, event, expected) in [
            ("text", &text, expected),
            ("binary", &binary, expected_binary),
        ] {
            let got = &event["new"][&column];
            if got != expected {
                wrong.push(format!(
                    "{mode} mode, {ty} {literal}: got {got}, expected {expected}"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} values wrong:\n{}",
        wrong.len(),
        cases.len() * 2,
        wrong.join("\n")
    );
    assert_eq!(text["key"], json!({"id": 1}));
    assert_eq!(binary["key"], json!({"id": 1}));
}

/// walcast's built-in knowledge (no catalog look-up for any built-in type)
/// agrees with what the catalog look-up says about the same types.
#[test]
fn built_in_types_match_the_catalog() {
    let db = TenantDb::start();
    let oids: Vec<u32> = db
        .sql(
            "select t.oid from pg_type t left join pg_type e on e.oid = t.typelem
              where t.oid < 16384 and t.typnamespace = 'pg_catalog'::regnamespace
                and t.typtype in ('b', 'r', 'm') and coalesce(e.typtype, 'b') in ('b', 'r', 'm')",
        )
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(oids.len() > 150, "{} built-in types", oids.len());
    let dir = TempDir::new("types-catalog");
    let config = config_file(&dir, &db, &[("acme", "\"public.tasks\"", "")]);
    let config = walcast::config::load(&config).unwrap();
    let tenant = &config.tenants[0];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shapes = runtime.block_on(async {
        let client = walcast::source::connect(tenant, "walcast test")
            .await
            .unwrap();
        walcast::source::load_types(&client, &tenant.id, &oids, &|_| false)
            .await
            .unwrap()
    });
    let mut wrong = Vec::new();
    for oid in &oids {
        let catalog = shapes.iter().find(|(o, _)| o == oid).map(|(_, s)| s);
        let builtin = walcast::apply::builtin_shape(*oid);
        if builtin.as_ref() != catalog {
            wrong.push(format!("{oid}: built in {builtin:?}, catalog {catalog:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
