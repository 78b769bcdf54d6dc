//! The worked example of spec §1.9 and §2.6, byte for byte.

use cache_core::config::go_time;
use cache_core::descriptor::{Descriptor, annotation, media_type};
use cache_core::graph::{CacheGraph, CacheResult, Link};
use cache_core::manifest::{self, ManifestForm};
use cache_core::{Digest, digest};

fn d(s: &str) -> Digest {
    s.parse().unwrap()
}

fn layer(digest: &str, size: u64, created: &str, uncompressed: &str) -> Descriptor {
    let mut desc = Descriptor::new(media_type::OCI_LAYER_GZIP, d(digest), size);
    desc.annotations
        .insert(annotation::CREATED_AT.into(), created.into());
    desc.annotations
        .insert(annotation::UNCOMPRESSED.into(), uncompressed.into());
    desc
}

/// Builds the graph of §1.9 in an order different from the sorted output.
fn example_graph() -> CacheGraph {
    let mut base = layer(
        "sha256:723ec5fe25c61eb07df4c6b9ed2a68cf8aeae5e2a051362538275ee49547fccf",
        3623807,
        "2024-06-20T17:50:51Z",
        "sha256:aef4f49169a2b617a0946c6e8fb8e259a15f8849b6ea376c1a7b3b6aa1fd5a95",
    );
    base.annotations.insert(
        "containerd.io/distribution.source.docker.io".into(),
        "library/alpine".into(),
    );
    let run = layer(
        "sha256:36d8c6eeaa90b778f04b4fa65c14fac72aca2c7dc283951f3c08f3ac51f89be4",
        1821,
        "2025-03-01T10:20:30.123456789Z",
        "sha256:022aad9bc27e01dd4aa512fb17b4c8357d08e473ee93d41933b5bc90f3993ce7",
    );
    let copy = layer(
        "sha256:8563dd6f3aad4f2ba7de72c14ab168832a4e40879f256f0219d45e4c1d8b157f",
        142,
        "2025-03-01T10:20:41.5Z",
        "sha256:2212dc4d4617565e9110a362758c63f5c46f808f541d1d41c9877f43b64cbefc",
    );
    let mut graph = CacheGraph::new();
    // Record digests as the spec computes them: sha256("<cachemap>@<output>").
    let a = graph.add_record(
        d("sha256:b1037a83033dcdb977e174b901d6197beaf0a6bbcd0b56f9b414fa4f1cb32c13"),
        vec![],
    );
    let b = graph.add_record(
        d("sha256:33beaf134159977454a0fb1dace5e60b543ff427735138586ad0fd407960c50b"),
        vec![vec![Link {
            selector: String::new(),
            record: a,
        }]],
    );
    let c = graph.add_record(
        d("sha256:62196041a794b9c692e52c0d427fc7ab8bdfe9211b0e95952c181f732ab90bef"),
        vec![],
    );
    let dd = graph.add_record(
        d("sha256:be2e8a41d1df0da6b6e7e5ba37b7baaf72f15599c7858253b6b2939a0c87f001"),
        vec![
            vec![Link {
                selector: String::new(),
                record: b,
            }],
            vec![Link {
                selector: String::new(),
                record: c,
            }],
        ],
    );
    let run_top = graph.add_chain([base.clone(), run.clone()]).unwrap();
    let copy_top = graph.add_chain([base, run, copy]).unwrap();
    graph.add_result(
        b,
        CacheResult {
            layer: run_top,
            created_at: go_time::parse("2025-03-01T10:20:30.123456789Z").unwrap(),
            source: 0,
        },
    );
    graph.add_result(
        dd,
        CacheResult {
            layer: copy_top,
            created_at: go_time::parse("2025-03-01T10:20:41.5Z").unwrap(),
            source: 0,
        },
    );
    graph
}

#[test]
fn record_digests_follow_buildkit_form() {
    // §1.9: A = sha256("<alpine cachemap>@0"); the spec gives the full plaintext digests' results.
    let plain = "sha256:db1e135a";
    assert_ne!(
        digest::sha256(format!("{plain}@0").as_bytes()),
        digest::sha256(format!("{plain}@-1").as_bytes())
    );
}

#[test]
fn config_serializes_to_the_exact_bytes_of_the_spec() {
    let (config, layers) = example_graph().to_config();
    let bytes = config.to_json();
    let expected = concat!(
        r#"{"layers":[{"blob":"sha256:36d8c6eeaa90b778f04b4fa65c14fac72aca2c7dc283951f3c08f3ac51f89be4","parent":1},"#,
        r#"{"blob":"sha256:723ec5fe25c61eb07df4c6b9ed2a68cf8aeae5e2a051362538275ee49547fccf","parent":-1},"#,
        r#"{"blob":"sha256:8563dd6f3aad4f2ba7de72c14ab168832a4e40879f256f0219d45e4c1d8b157f"}],"#,
        r#""records":[{"layers":[{"layer":0,"createdAt":"2025-03-01T10:20:30.123456789Z"}],"digest":"sha256:33beaf134159977454a0fb1dace5e60b543ff427735138586ad0fd407960c50b","inputs":[[{"link":2}]]},"#,
        r#"{"digest":"sha256:62196041a794b9c692e52c0d427fc7ab8bdfe9211b0e95952c181f732ab90bef"},"#,
        r#"{"digest":"sha256:b1037a83033dcdb977e174b901d6197beaf0a6bbcd0b56f9b414fa4f1cb32c13"},"#,
        r#"{"layers":[{"layer":2,"createdAt":"2025-03-01T10:20:41.5Z"}],"digest":"sha256:be2e8a41d1df0da6b6e7e5ba37b7baaf72f15599c7858253b6b2939a0c87f001","inputs":[[{"link":0}],[{"link":1}]]}]}"#
    );
    assert_eq!(String::from_utf8(bytes.clone()).unwrap(), expected);
    assert_eq!(bytes.len(), 825);
    assert_eq!(
        digest::sha256(&bytes).to_string(),
        "sha256:a6a90f24e48b7ac27098f2d586ff85f53f362cfc7cd322cca66ecb14a108d9e7"
    );

    let config_desc = Descriptor::new(
        media_type::CACHE_CONFIG,
        digest::sha256(&bytes),
        bytes.len() as u64,
    );
    let image_manifest = manifest::write(ManifestForm::ImageManifest, &config_desc, &layers);
    assert_eq!(image_manifest.bytes.len(), 1277);
    assert_eq!(
        image_manifest.digest.to_string(),
        "sha256:54944ba8076d8af3007a65f215fa12d63329d8cb80645162ee2960b144c240ec"
    );
    let index = manifest::write(ManifestForm::OciIndex, &config_desc, &layers);
    assert_eq!(index.bytes.len(), 1268);
}

#[test]
fn all_three_forms_read_back_with_their_media_types() {
    let (config, layers) = example_graph().to_config();
    let bytes = config.to_json();
    let config_desc = Descriptor::new(
        media_type::CACHE_CONFIG,
        digest::sha256(&bytes),
        bytes.len() as u64,
    );
    for form in [
        ManifestForm::ImageManifest,
        ManifestForm::OciIndex,
        ManifestForm::DockerList,
    ] {
        let raw = manifest::write(form, &config_desc, &layers);
        let read = manifest::read(&raw).unwrap();
        assert_eq!(read.form, form);
        assert_eq!(read.media_type, form.media_type());
        assert_eq!(read.config, config_desc);
        assert_eq!(read.layers.len(), 3);
        let expected_type = if form.is_oci() {
            media_type::OCI_LAYER_GZIP
        } else {
            media_type::DOCKER_LAYER_GZIP
        };
        assert!(read.layers.iter().all(|l| l.media_type == expected_type));
    }
}

#[test]
fn forms_are_detected_by_shape_without_media_type() {
    let config = r#"{"mediaType":"application/vnd.buildkit.cacheconfig.v0","digest":"sha256:a6a90f24e48b7ac27098f2d586ff85f53f362cfc7cd322cca66ecb14a108d9e7","size":825}"#;
    let as_manifest = format!(r#"{{"schemaVersion":2,"config":{config},"layers":[]}}"#);
    let read = manifest::read(&cache_core::RawIndex::new(None, as_manifest.into_bytes())).unwrap();
    assert_eq!(read.form, ManifestForm::ImageManifest);
    let as_list = format!(r#"{{"schemaVersion":2,"manifests":[{config}]}}"#);
    let read = manifest::read(&cache_core::RawIndex::new(None, as_list.into_bytes())).unwrap();
    assert_eq!(read.form, ManifestForm::DockerList);
    assert_eq!(read.media_type, media_type::DOCKER_LIST);
    let ambiguous = format!(r#"{{"schemaVersion":2,"config":{config},"manifests":[]}}"#);
    assert!(manifest::read(&cache_core::RawIndex::new(None, ambiguous.into_bytes())).is_err());
    let mismatch = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","config":{config}}}"#
    );
    let err = manifest::read(&cache_core::RawIndex::new(None, mismatch.into_bytes())).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
}

#[test]
fn select_min_equals_max_when_every_result_is_in_the_final_chain() {
    let graph = example_graph();
    let target = graph.find(
        &d("sha256:be2e8a41d1df0da6b6e7e5ba37b7baaf72f15599c7858253b6b2939a0c87f001"),
        &[("", &[1]), ("", &[2])],
    );
    assert_eq!(target.len(), 1);
    let max = graph.select(&target, cache_core::Mode::Max);
    let min = graph.select(&target, cache_core::Mode::Min);
    // In one stage, the RUN result is part of the final chain: min and max agree (spec §5).
    assert_eq!(max.to_config().0, min.to_config().0);
    assert_eq!(max.records().len(), 4);
}

#[test]
fn select_min_keeps_only_the_final_chain() {
    // Two stages: a builder (base + RUN) and a final stage on scratch that copies from it.
    // The builder's RUN result is not part of the final image's chain, so `min` drops it.
    let base = layer(
        "sha256:723ec5fe25c61eb07df4c6b9ed2a68cf8aeae5e2a051362538275ee49547fccf",
        3623807,
        "2024-06-20T17:50:51Z",
        "sha256:aef4f49169a2b617a0946c6e8fb8e259a15f8849b6ea376c1a7b3b6aa1fd5a95",
    );
    let built = layer(
        "sha256:36d8c6eeaa90b778f04b4fa65c14fac72aca2c7dc283951f3c08f3ac51f89be4",
        1821,
        "2025-03-01T10:20:30Z",
        "sha256:022aad9bc27e01dd4aa512fb17b4c8357d08e473ee93d41933b5bc90f3993ce7",
    );
    let copied = layer(
        "sha256:8563dd6f3aad4f2ba7de72c14ab168832a4e40879f256f0219d45e4c1d8b157f",
        142,
        "2025-03-01T10:20:41Z",
        "sha256:2212dc4d4617565e9110a362758c63f5c46f808f541d1d41c9877f43b64cbefc",
    );
    let link = |record| Link {
        selector: String::new(),
        record,
    };
    let mut graph = CacheGraph::new();
    let image = graph.add_record(digest::sha256(b"image@0"), vec![]);
    let scratch = graph.add_record(digest::sha256(b"scratch@0"), vec![]);
    let run = graph.add_record(digest::sha256(b"run@0"), vec![vec![link(image)]]);
    let copy = graph.add_record(
        digest::sha256(b"copy@0"),
        vec![vec![link(scratch)], vec![link(run)]],
    );
    let run_top = graph.add_chain([base, built]).unwrap();
    let copy_top = graph.add_chain([copied.clone()]).unwrap();
    let at = go_time::parse("2025-03-01T10:20:41Z").unwrap();
    for (record, layer) in [(run, run_top), (copy, copy_top)] {
        graph.add_result(
            record,
            CacheResult {
                layer,
                created_at: at,
                source: 0,
            },
        );
    }

    let max = graph.select(&[copy], cache_core::Mode::Max);
    let min = graph.select(&[copy], cache_core::Mode::Min);
    // Both keep every record the target reaches, so a later build can still walk to it.
    assert_eq!(max.records().len(), 4);
    assert_eq!(min.records().len(), 4);
    let (max_config, max_blobs) = max.to_config();
    let (min_config, min_blobs) = min.to_config();
    assert_ne!(max_config, min_config);
    // max: the builder's chain (2 blobs) and the final one; min: only the final chain.
    assert_eq!(max_blobs.len(), 3);
    assert_eq!(min_blobs, vec![copied]);
    let with_results =
        |g: &CacheGraph| g.records().iter().filter(|r| !r.results.is_empty()).count();
    assert_eq!(with_results(&max), 2);
    assert_eq!(with_results(&min), 1);
}
