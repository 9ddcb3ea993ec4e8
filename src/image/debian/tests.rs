use super::*;

#[test]
fn simulation_lines_give_names_and_exact_versions() {
    let out = "NOTE: This is only a simulation!\n\
        Inst gcc-12-base (12.2.0-14+deb12u1 Debian:12.15/oldstable [amd64])\n\
        Inst libgcc-s1 (12.2.0-14+deb12u1 Debian:12.15/oldstable [amd64]) []\n\
        Inst zlib1g (1:1.2.13.dfsg-1+deb12u1 Debian-Security:12/oldstable-security [amd64])\n\
        Conf zlib1g (1:1.2.13.dfsg-1+deb12u1 Debian-Security:12/oldstable-security [amd64])\n";
    let p = parse_simulation(out);
    assert_eq!(p.len(), 3);
    assert_eq!(p[2].name, "zlib1g");
    assert_eq!(p[2].version, "1:1.2.13.dfsg-1+deb12u1");
    assert_eq!(p[1].version, "12.2.0-14+deb12u1");
}

#[test]
fn print_uris_lines_give_file_and_size() {
    let out = "'http://deb.debian.org/debian/pool/main/b/busybox/busybox-static_1.35.0-4%2bdeb12u1%2bb1_amd64.deb' busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb 928188 SHA256:3d3f\n\
        garbage line\n";
    assert_eq!(
        parse_uris(out),
        [(
            "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb".to_owned(),
            928188
        )]
    );
}

#[test]
fn deb_file_names_carry_the_version_with_its_epoch_encoded() {
    let p = Package {
        name: "zlib1g".into(),
        version: "1:1.2.13.dfsg-1+deb12u1".into(),
    };
    assert_eq!(deb_prefix(&p), "zlib1g_1%3a1.2.13.dfsg-1+deb12u1_");
    assert!("zlib1g_1%3a1.2.13.dfsg-1+deb12u1_amd64.deb".starts_with(&deb_prefix(&p)));
}

#[test]
fn stanza_fields_read_the_first_stanza_with_continuations() {
    let text = "Package: linux-image-cloud-amd64\nVersion: 6.1.192-3\n\
        Depends: linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)\nDescription: x\n more\n\n\
        Package: other\nVersion: 9\n";
    let f = stanza_fields(text);
    assert_eq!(f["Version"], "6.1.192-3");
    assert_eq!(
        f["Depends"],
        "linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)"
    );
    assert_eq!(f["Description"], "x\nmore");
    assert_eq!(
        f.get("Package").map(String::as_str),
        Some("linux-image-cloud-amd64")
    );
}

#[test]
fn the_configuration_points_apt_at_the_cache_only() {
    if !command::exists("apt-get") {
        eprintln!("skipping: no apt-get");
        return;
    }
    let dir = std::env::temp_dir().join(format!("zeroboot-debian-conf-{}", std::process::id()));
    let d = Debian::open(&dir).unwrap();
    let conf = fs::read_to_string(&d.config).unwrap();
    for (key, path) in [
        ("Dir::Etc::sourcelist", "etc/sources.list"),
        ("Dir::Etc::parts", "etc/apt.conf.d"),
        ("Dir::Etc::trustedparts", "keys"),
        ("Dir::State::status", "state/status"),
        ("Dir::Cache", "cache"),
    ] {
        let want = format!("{key} \"{}\";", dir.join(path).display());
        assert!(conf.contains(&want), "{want} missing from\n{conf}");
    }
    assert!(conf.contains("Dir::Etc::main \"/dev/null\";"));
    let sources = fs::read_to_string(dir.join("etc/sources.list")).unwrap();
    assert_eq!(sources.matches(" bookworm").count(), 3, "{sources}");
    // apt itself reports the configuration it runs on.
    let out = command::run(d.apt("apt-config").arg("dump")).unwrap();
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(
        dump.contains(&format!(
            "Dir::Etc::sourcelist \"{}",
            dir.join("etc/sources.list").display()
        )),
        "{dump}"
    );
    assert!(
        !dump.contains("/etc/apt/apt.conf.d"),
        "the host's parts leak in"
    );
    fs::remove_dir_all(&dir).unwrap();
}
