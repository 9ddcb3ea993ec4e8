//! `python.packages` resolution with uv for the guest's exact Python
//! (cp311, manylinux x86_64): against a local wheelhouse this test builds
//! (pure wheels, a dependency, a wheel for the wrong Python, a missing
//! package), then one real manylinux wheel from PyPI. Needs uv (scripts/setup
//! installs it) and python3 to write the wheels; without uv it skips unless
//! ZEROBOOT_REQUIRE_UV=1.

use std::path::{Path, PathBuf};
use zeroboot::image::ImageError;
use zeroboot::image::wheels::{self, Installed};
use zeroboot::spec::PythonSpec;

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("zeroboot-wheels-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes wheels (name, version, tag, requires) with python3's zipfile.
fn wheelhouse(dir: &Path, wheels: &[(&str, &str, &str, &str)]) {
    let script = r#"
import sys, zipfile, base64, hashlib
out, name, version, tag, requires = sys.argv[1:6]
dist = f"{name}-{version}.dist-info"
files = {
    f"{name}/__init__.py": f"VERSION = {version!r}\n",
    f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires.split(",") if r),
    f"{dist}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: {'true' if tag.startswith('py3') else 'false'}\nTag: {tag}\n",
}
record = ""
for p, c in files.items():
    h = base64.urlsafe_b64encode(hashlib.sha256(c.encode()).digest()).rstrip(b"=").decode()
    record += f"{p},sha256={h},{len(c)}\n"
files[f"{dist}/RECORD"] = record + f"{dist}/RECORD,,\n"
with zipfile.ZipFile(f"{out}/{name}-{version}-{tag}.whl", "w") as z:
    for p, c in files.items():
        z.writestr(p, c)
"#;
    for (name, version, tag, requires) in wheels {
        let st = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(dir)
            .args([name, version, tag, requires])
            .status()
            .unwrap();
        assert!(st.success());
    }
}

fn have_uv() -> bool {
    let found = std::env::var_os("ZEROBOOT_UV").is_some()
        || std::process::Command::new("uv")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        || std::process::Command::new("python3")
            .args(["-m", "uv", "--version"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("ZEROBOOT_REQUIRE_UV").as_deref() != Ok("1"),
            "ZEROBOOT_REQUIRE_UV=1 but no uv"
        );
        eprintln!("SKIPPED: no uv (pip install uv)");
    }
    found
}

fn local(find_links: &Path, packages: &[&str]) -> PythonSpec {
    PythonSpec {
        packages: packages.iter().map(|p| p.to_string()).collect(),
        find_links: Some(find_links.to_owned()),
        no_index: true,
        ..PythonSpec::default()
    }
}

#[test]
fn a_local_wheelhouse_resolves_for_the_guest_and_refuses_what_it_cannot() {
    if !have_uv() {
        return;
    }
    let d = tmp("local");
    let house = d.join("house");
    std::fs::create_dir_all(&house).unwrap();
    wheelhouse(
        &house,
        &[
            ("app", "1.0", "py3-none-any", "dep>=1"),
            ("dep", "1.0", "py3-none-any", ""),
            ("dep", "1.2", "py3-none-any", ""),
            ("native", "2.0", "cp311-cp311-manylinux_2_17_x86_64", ""),
            ("native", "2.1", "cp311-cp311-manylinux_2_39_x86_64", ""),
            ("oldabi", "1.0", "cp39-cp39-manylinux_2_17_x86_64", ""),
            ("macos", "1.0", "cp311-cp311-macosx_11_0_arm64", ""),
        ],
    );
    let (site, bin, cache) = (d.join("site"), d.join("bin"), d.join("cache"));
    let got = wheels::install(&local(&house, &["app", "native"]), &site, &bin, &cache).unwrap();
    let want = |n: &str, v: &str| Installed {
        name: n.into(),
        version: v.into(),
    };
    // The newest dep; native 2.0, since 2.1 needs a newer glibc than bookworm's.
    assert_eq!(
        got,
        [
            want("app", "1.0"),
            want("dep", "1.2"),
            want("native", "2.0")
        ]
    );
    assert!(site.join("app/__init__.py").is_file());

    for (req, no_wheel) in [
        ("oldabi", true),
        ("macos", true),
        ("missing-pkg", false),
        ("dep==9", false),
    ] {
        let site = d.join(format!("site-{req}"));
        match wheels::install(&local(&house, &[req]), &site, &bin, &cache) {
            Err(ImageError::PythonNoWheel { requirement, .. }) if no_wheel => {
                assert_eq!(requirement, req)
            }
            Err(ImageError::PythonUnresolvable {
                requirement,
                detail,
            }) if !no_wheel => {
                assert_eq!(requirement.as_deref(), Some(req), "{detail}")
            }
            other => panic!("{req}: unexpected {other:?}"),
        }
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_real_manylinux_wheel_from_pypi_installs_for_cp311() {
    if !have_uv() {
        return;
    }
    let d = tmp("pypi");
    let (site, bin, cache) = (d.join("site"), d.join("bin"), d.join("cache"));
    let spec = PythonSpec {
        packages: vec!["markupsafe==2.1.5".into()],
        ..PythonSpec::default()
    };
    let got = wheels::install(&spec, &site, &bin, &cache).unwrap();
    assert_eq!(
        got,
        [Installed {
            name: "MarkupSafe".into(),
            version: "2.1.5".into()
        }]
    );
    let ext = std::fs::read_dir(site.join("markupsafe"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.ends_with(".so"))
        .expect("the compiled speedups");
    assert_eq!(ext, "_speedups.cpython-311-x86_64-linux-gnu.so");
    std::fs::remove_dir_all(&d).unwrap();
}
