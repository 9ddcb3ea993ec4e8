use super::*;
use std::fs;

fn layer(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

const CONFIG: &str = r#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/bin:/bin","GREETING=hello=world"],"WorkingDir":"/app","User":"1000:1000"}}"#;

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("zeroboot-oci-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// A `docker save` archive: manifest.json, a config and two layer tars.
fn docker_save(dir: &Path) -> PathBuf {
    let members = [
        ("manifest.json".to_owned(), r#"[{"Config":"cfg.json","RepoTags":["t:1"],"Layers":["l1/layer.tar","l2/layer.tar"]}]"#.as_bytes().to_vec()),
        ("cfg.json".to_owned(), CONFIG.as_bytes().to_vec()),
        ("l1/layer.tar".to_owned(), layer(&[("app/a", "1"), ("app/b", "1")])),
        ("l2/layer.tar".to_owned(), layer(&[("app/.wh.b", ""), ("app/c", "2")])),
    ];
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in &members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    let path = dir.join("image.tar");
    fs::write(&path, b.into_inner().unwrap()).unwrap();
    path
}

/// An OCI layout directory with an index pointing at one gzipped layer.
fn oci_layout(dir: &Path) -> PathBuf {
    let layout = dir.join("layout");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |n: u8, data: &[u8]| {
        let hex = format!("{n:02x}").repeat(32);
        fs::write(blobs.join(&hex), data).unwrap();
        format!("sha256:{hex}")
    };
    let layer = put(1, &gzip(&layer(&[("etc/motd", "hi")])));
    let config = put(2, CONFIG.as_bytes());
    let manifest = put(
        3,
        format!(r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}"}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}"}}]}}"#).as_bytes(),
    );
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    fs::write(
        layout.join("index.json"),
        format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest}","platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#),
    )
    .unwrap();
    layout
}

#[test]
fn docker_save_archives_apply_in_order_with_their_config() {
    let d = tmp("docker");
    let image = docker_save(&d);
    let oci = open(&image, &d.join("work")).unwrap();
    assert_eq!(
        oci.defaults,
        OciDefaults {
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("GREETING".into(), "hello=world".into())
            ],
            working_dir: Some("/app".into()),
            user: Some("1000:1000".into()),
        }
    );
    let root = d.join("root");
    apply(&image, &oci, &root, &mut Owners::new()).unwrap();
    assert!(root.join("app/a").is_file());
    assert!(
        !root.join("app/b").exists(),
        "the whiteout of layer 2 applies"
    );
    assert_eq!(fs::read_to_string(root.join("app/c")).unwrap(), "2");
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn oci_layouts_with_gzip_layers_apply() {
    let d = tmp("layout");
    let layout = oci_layout(&d);
    let oci = open(&layout, &d.join("work")).unwrap();
    assert_eq!(oci.defaults.working_dir.as_deref(), Some("/app"));
    let root = d.join("root");
    apply(&layout, &oci, &root, &mut Owners::new()).unwrap();
    assert_eq!(fs::read_to_string(root.join("etc/motd")).unwrap(), "hi");
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn what_is_not_an_image_is_refused() {
    let d = tmp("bad");
    let plain = d.join("plain.tar");
    fs::write(&plain, layer(&[("hello.txt", "x")])).unwrap();
    assert!(matches!(
        open(&plain, &d.join("w")),
        Err(ImageError::OciInvalid { .. })
    ));
    let junk = d.join("junk.tar");
    fs::write(&junk, "definitely not a tar archive").unwrap();
    assert!(matches!(
        open(&junk, &d.join("w")),
        Err(ImageError::OciInvalid { .. })
    ));
    assert!(matches!(
        open(&d.join("missing.tar"), &d.join("w")),
        Err(ImageError::Missing { .. })
    ));
    // A manifest naming a layer outside the archive, or a bad digest.
    let layout = oci_layout(&d);
    fs::write(
        layout.join("index.json"),
        r#"{"manifests":[{"mediaType":"x","digest":"sha256:../../../etc/passwd"}]}"#,
    )
    .unwrap();
    assert!(matches!(
        open(&layout, &d.join("w")),
        Err(ImageError::OciInvalid { .. })
    ));
    let docker = d.join("docker");
    fs::create_dir_all(&docker).unwrap();
    fs::write(
        docker.join("manifest.json"),
        r#"[{"Config":"../../etc/passwd","Layers":[]}]"#,
    )
    .unwrap();
    assert!(matches!(
        open(&docker, &d.join("w")),
        Err(ImageError::OciInvalid { .. })
    ));
    fs::remove_dir_all(&d).unwrap();
}
