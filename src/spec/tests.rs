use super::*;

const FULL: &str = r#"
base = "python"
memory_mib = 1024
cwd = "/work"
user = "sandbox"
warmup = ["python3 -c 'import numpy'"]
env = { OPENBLAS_NUM_THREADS = "1", GREETING = "hi there" }

[python]
packages = ["numpy==2.*", "requests"]
preload = ["numpy", "os.path"]
find_links = "wheels"

[debian]
packages = ["nodejs", "libgomp1=12.2.0-14"]

[[files]]
from = "data"
to = "/data"
mode = "0644"
"#;

fn dir() -> &'static Path {
    Path::new("/specs")
}

fn field_error(text: &str) -> (String, String) {
    match Spec::from_toml(text, dir()) {
        Err(SpecError::Field { field, detail }) => (field, detail),
        other => panic!("expected a field error for {text:?}, got {other:?}"),
    }
}

#[test]
fn a_full_spec_parses_and_host_paths_become_absolute() {
    let spec = Spec::from_toml(FULL, dir()).unwrap();
    assert_eq!(spec.base, Base::Python);
    let oci = Spec::from_toml("base = { oci = \"images/app.tar\" }", dir()).unwrap();
    assert_eq!(oci.base, Base::Oci("/specs/images/app.tar".into()));
    assert_eq!(spec.memory_mib(), 1024);
    assert_eq!(spec.python.packages, ["numpy==2.*", "requests"]);
    assert_eq!(spec.python.stdlib(), Stdlib::Full);
    assert_eq!(spec.python.find_links, Some("/specs/wheels".into()));
    assert_eq!(spec.files[0].from, PathBuf::from("/specs/data"));
    assert_eq!(spec.files[0].mode_bits(), Some(0o644));
    assert_eq!(spec.env["GREETING"], "hi there");
    assert_eq!(spec.user.as_deref(), Some("sandbox"));
}

#[test]
fn the_empty_spec_is_the_python_base_with_defaults() {
    let spec = Spec::from_toml("", dir()).unwrap();
    assert_eq!(spec.base, Base::Python);
    assert_eq!(spec.memory_mib(), DEFAULT_MEMORY_MIB);
    assert_eq!(spec.python.stdlib(), Stdlib::Minimal);
    assert_eq!(spec, Spec::default());
}

#[test]
fn toml_and_json_forms_are_the_same_object() {
    let spec = Spec::from_toml(FULL, dir()).unwrap();
    let again = Spec::from_json(&spec.to_json(), Path::new("/elsewhere")).unwrap();
    assert_eq!(spec, again, "absolute paths stay as they are");
    let json = serde_json::json!({"base": "python", "python": {"packages": ["six"]}});
    let spec = Spec::from_json(&json, dir()).unwrap();
    assert_eq!(spec.python.packages, ["six"]);
    assert_eq!(spec.to_json()["base"], "python");
}

#[test]
fn unknown_and_misspelt_fields_are_named() {
    assert_eq!(field_error("memory = 5").0, "memory");
    let (field, detail) = field_error("[python]\npackage = [\"numpy\"]");
    assert_eq!(field, "python.package");
    assert!(detail.contains("expected one of"), "{detail}");
    assert!(detail.contains("packages"), "{detail}");
    assert_eq!(
        field_error("[[files]]\nfrom = \"a\"\nto = \"/a\"\nmod = \"0644\"").0,
        "files[0].mod"
    );
    let (field, detail) = field_error("base = { docker = \"x\" }");
    assert_eq!(field, "base");
    assert!(
        detail.contains("unknown field `docker`, expected `oci`"),
        "{detail}"
    );
}

#[test]
fn wrong_types_name_the_field_and_what_was_expected() {
    let (field, detail) = field_error("memory_mib = \"lots\"");
    assert_eq!(field, "memory_mib");
    assert!(detail.contains("u32"), "{detail}");
    let (field, detail) = field_error("[python]\npackages = [\"numpy\", 3]");
    assert_eq!(field, "python.packages[1]");
    assert!(detail.contains("string"), "{detail}");
    let (field, detail) = field_error("base = \"ubuntu\"");
    assert_eq!(field, "base");
    assert!(detail.contains("\"python\" or {oci = PATH}"), "{detail}");
    let (field, _) = field_error("[[files]]\nto = \"/a\"");
    assert_eq!(field, "files[0]");
}

#[test]
fn bad_values_are_refused_with_the_field() {
    let cases = [
        ("memory_mib = 64", "memory_mib"),
        ("memory_mib = 4096", "memory_mib"),
        ("cwd = \"work\"", "cwd"),
        ("cwd = \"/a/../b\"", "cwd"),
        ("user = \"Root!\"", "user"),
        ("user = \"1000:x\"", "user"),
        ("env = { \"1BAD\" = \"x\" }", "env.1BAD"),
        ("env = { A = \"line\\nbreak\" }", "env.A"),
        ("warmup = [\"\"]", "warmup[0]"),
        (
            "[python]\npackages = [\"--index-url=http://evil\"]",
            "python.packages[0]",
        ),
        (
            "[python]\npreload = [\"numpy; import os\"]",
            "python.preload[0]",
        ),
        ("[python]\nindex_url = \"ftp://x\"", "python.index_url"),
        (
            "[python]\nno_index = true\npackages = [\"six\"]",
            "python.no_index",
        ),
        ("[debian]\npackages = [\"NodeJS\"]", "debian.packages[0]"),
        (
            "base = { oci = \"i.tar\" }\n[python]\npackages = [\"six\"]",
            "python.packages",
        ),
        ("[debian]\npackages = [\"a\"]", "debian.packages[0]"),
        ("[[files]]\nfrom = \"a\"\nto = \"relative\"", "files[0].to"),
        (
            "[[files]]\nfrom = \"a\"\nto = \"/a\"\nmode = \"0999\"",
            "files[0].mode",
        ),
        (
            "[[files]]\nfrom = \"a\"\nto = \"/a\"\nmode = \"17777\"",
            "files[0].mode",
        ),
    ];
    for (text, field) in cases {
        assert_eq!(field_error(text).0, field, "{text}");
    }
}

#[test]
fn valid_edge_values_pass() {
    for text in [
        "user = \"1000\"",
        "user = \"1000:100\"",
        "user = \"_svc-1\"",
        "memory_mib = 128",
        "memory_mib = 3072",
        "[debian]\npackages = [\"libstdc++6\", \"python3.11=3.11.2-6+deb12u6\"]",
        "[python]\npreload = [\"xml.etree.ElementTree\"]",
    ] {
        Spec::from_toml(text, dir()).unwrap_or_else(|e| panic!("{text}: {e}"));
    }
}

#[test]
fn size_and_count_limits_hold() {
    let big = format!("warmup = [\"{}\"]", "x".repeat(MAX_SPEC_BYTES));
    assert!(matches!(
        Spec::from_toml(&big, dir()),
        Err(SpecError::TooLarge(_))
    ));
    let many = format!(
        "warmup = [{}]",
        vec!["\"true\""; validate::MAX_ITEMS + 1].join(",")
    );
    assert_eq!(field_error(&many).0, "warmup");
    assert!(matches!(
        Spec::from_toml("memory_mib = [", dir()),
        Err(SpecError::Syntax(_))
    ));
}

#[test]
fn load_reads_toml_and_json_files_relative_to_their_directory() {
    let d = std::env::temp_dir().join(format!("zeroboot-spec-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("zeroboot.toml"),
        "[[files]]\nfrom = \"x\"\nto = \"/x\"",
    )
    .unwrap();
    std::fs::write(
        d.join("spec.json"),
        r#"{"files": [{"from": "y", "to": "/y"}]}"#,
    )
    .unwrap();
    assert_eq!(
        Spec::load(&d.join("zeroboot.toml")).unwrap().files[0].from,
        d.join("x")
    );
    assert_eq!(
        Spec::load(&d.join("spec.json")).unwrap().files[0].from,
        d.join("y")
    );
    assert!(matches!(
        Spec::load(&d.join("missing.toml")),
        Err(SpecError::Read { .. })
    ));
    assert!(matches!(Spec::load(&d), Err(SpecError::Read { .. })));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn network_is_false_or_a_policy_checked_like_a_forks() {
    let spec = Spec::from_toml(
        "[network]\nallow = [\"pypi.org:443\", \"10.0.0.0/8\"]\ndeny = [\"10.9.0.0/16\"]\nmax_connections = 8\n",
        dir(),
    )
    .unwrap();
    let n = spec.network.0.as_ref().unwrap();
    assert_eq!(n.allow, ["pypi.org:443", "10.0.0.0/8"]);
    assert_eq!(n.max_connections, Some(8));
    // What templates record reads back the same; `false` is as if absent.
    assert_eq!(Spec::from_json(&spec.to_json(), dir()).unwrap(), spec);
    assert_eq!(
        Spec::from_toml("network = false", dir()).unwrap(),
        Spec::default()
    );
    assert!(Spec::default().to_json().get("network").is_none());
    for (text, field, says) in [
        ("network = true", "network", "false or a table"),
        ("network = 3", "network", "false or a table"),
        (
            "[network]\nallow = [\"300.1.1.1:80\"]",
            "network",
            "300.1.1.1:80",
        ),
        (
            "[network]\ndeny = [\"*.x.com:99999\"]",
            "network",
            "*.x.com:99999",
        ),
        ("[network]\nallow = [\"\"]", "network.allow[0]", "empty"),
        ("[network]\nallwo = []", "network.allwo", "allwo"),
        (
            "[network]\nmax_connections = 0",
            "network.max_connections",
            "1 to 4096",
        ),
        (
            "[network]\nmax_bytes_per_sec = 10",
            "network.max_bytes_per_sec",
            "at least 1024",
        ),
    ] {
        let (f, detail) = field_error(text);
        assert_eq!(f, field, "{text}: {detail}");
        assert!(detail.contains(says), "{text}: {detail}");
    }
}
