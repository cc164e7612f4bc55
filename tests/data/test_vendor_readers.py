"""Vendor OCT files built to their published layouts (oct-converter's own construct definitions), read back."""
import struct

import numpy as np
import pytest

from oct_foundation.data.readers import OCTVolumeReader, load_oct
from oct_foundation.data.vendor import HeidelbergE2EReader, TopconOCTReader, ZeissImgReader
from oct_foundation.errors import OCTInputError

D, H, W = 5, 24, 16


@pytest.fixture
def vol16():
    return np.random.default_rng(7).integers(0, 4096, size=(D, H, W)).astype(np.uint16)


def _chunk(name: bytes, payload: bytes) -> bytes:
    return struct.pack("<B", len(name)) + name + struct.pack("<I", len(payload)) + payload


def write_topcon(path, vol, kind="fds", x_mm=6.0, y_mm=4.5, z_um=2.6, eye=1, param=True):
    """A Topcon file: FOCT header, @CAPTURE_INFO_02, @PARAM_SCAN_04, then the raw uint16 volume chunk
    (@IMG_SCAN_03 for .fds, @IMG_MOT_COMP_03 for .fda); voxels stored x fastest, then depth, then slice."""
    from oct_converter.readers.binary_structs import fda_binary, fds_binary

    b = fds_binary if kind == "fds" else fda_binary
    d, h, w = vol.shape
    out = b.header.build(dict(file_code="FOCT", file_type="FDA", major_ver=8, minor_ver=3))
    out += _chunk(b"@CAPTURE_INFO_02", b.capture_info_02_header.build(dict(
        eye=eye, scan_mode=2, session_id=1, label="3D", cap_date=[2024, 5, 6, 7, 8, 9])))
    if param:
        out += _chunk(b"@PARAM_SCAN_04", b.param_scan_04_header.build(dict(
            fixation=0, mirror_pos=0, polar=0, x_dimension_mm=x_mm, y_dimension_mm=y_mm, z_resolution_um=z_um,
            comp_eff_2=0.0, comp_eff_3=0.0, base_pos=0, used_calib_data=0)))
    hdr = dict(scan_mode=2, width=w, height=h, bits_per_pixel=16, number_slices=d, format=0, size=vol.nbytes)
    if kind == "fds":
        name, head = b"@IMG_SCAN_03", b.oct_header.build(hdr)
    else:
        name, head = b"@IMG_MOT_COMP_03", b.oct_header_2.build(hdr)
    out += _chunk(name, head + np.ascontiguousarray(vol, "<u2").tobytes())
    out += b"\x00"
    path.write_bytes(out)
    return path


@pytest.mark.parametrize("kind", ["fds", "fda"])
def test_topcon_reads_voxels_spacing_and_laterality(tmp_path, vol16, kind):
    p = write_topcon(tmp_path / f"scan.{kind}", vol16, kind=kind)
    x = load_oct(p)
    assert tuple(x.shape) == (1, D, H, W)
    np.testing.assert_array_equal(x[0].numpy(), vol16.astype(np.float32))
    np.testing.assert_allclose(x.meta["spacing"], (4.5 / D, 2.6e-3, 6.0 / W), rtol=1e-6)
    assert x.meta["format"] == "topcon" and x.meta["laterality"] == "L" and x.meta["scan_mode"] == 2
    assert x.meta["spacing_source"].startswith("file @PARAM_SCAN")
    # the same file without a suffix is found by its FOCT magic
    bare = tmp_path / f"scan_{kind}"
    bare.write_bytes(p.read_bytes())
    y = load_oct(bare)
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    assert y.meta["format"] == "topcon"
    # the numpy 2 shim lives only inside oct-converter's modules: numpy itself still refuses binary fromstring
    with pytest.raises(ValueError):
        np.fromstring(b"\x00\x01", dtype=np.uint8)


def test_topcon_without_scan_params_says_so(tmp_path, vol16):
    x = TopconOCTReader().get_data(TopconOCTReader().read(str(write_topcon(tmp_path / "a.fds", vol16, param=False))))
    np.testing.assert_array_equal(x[1]["spacing"], (1.0, 1.0, 1.0))
    assert "not in the file" in x[1]["spacing_source"]


def test_topcon_bad_input_names_the_file(tmp_path, vol16):
    p = write_topcon(tmp_path / "a.fds", vol16)
    cut = tmp_path / "cut.fds"
    cut.write_bytes(p.read_bytes()[:300])
    with pytest.raises(OCTInputError, match=r"cut.fds: cannot read Topcon file, truncated or corrupt"):
        load_oct(cut)
    junk = tmp_path / "junk.fda"
    junk.write_bytes(b"hello" * 50)
    with pytest.raises(OCTInputError, match=r"junk.fda: not a Topcon FDA/FDS file"):
        load_oct(junk)
    with pytest.raises(OCTInputError, match=r"missing.fds: file not found"):
        load_oct(tmp_path / "missing.fds")


def test_topcon_memory_url(memfs, tmp_path, vol16):
    p = write_topcon(tmp_path / "a.fds", vol16)
    memfs.pipe("/bucket/a.fds", p.read_bytes())
    x = load_oct("memory://bucket/a.fds")
    np.testing.assert_array_equal(x[0].numpy(), vol16.astype(np.float32))


def test_zeiss_img_geometry_from_file_name_or_user(tmp_path):
    vol = np.random.default_rng(1).integers(0, 256, size=(D, H, W)).astype(np.uint8)
    # Cirrus raw export: per B-scan, A-scans of H bytes each, W of them
    raw = np.ascontiguousarray(vol.transpose(0, 2, 1)).tobytes()
    p = tmp_path / f"P123_Macular Cube {W}x{D}_5-6-2024_7-8-9_OS_sn42_cube_z.img"
    p.write_bytes(raw)
    x = load_oct(p)
    np.testing.assert_array_equal(x[0].numpy(), vol.astype(np.float32))
    assert x.meta["laterality"] == "L" and x.meta["format"] == "zeiss"
    assert "not in the file" in x.meta["spacing_source"]
    q = tmp_path / "export.img"
    q.write_bytes(raw)
    with pytest.raises(OCTInputError, match=r"export.img: Zeiss .img holds no geometry"):
        load_oct(q)
    r = ZeissImgReader(geometry=(W, D), spacing=(6 / D, 2 / H, 6 / W))
    y = load_oct(q, r)
    np.testing.assert_array_equal(y[0].numpy(), vol.astype(np.float32))
    np.testing.assert_allclose(y.meta["spacing"], (6 / D, 2 / H, 6 / W))
    with pytest.raises(OCTInputError, match=r"whole number of 7x5 B-scans"):
        load_oct(q, ZeissImgReader(geometry=(7, 5)))
    z = tmp_path / "cube 0x128.img"
    z.write_bytes(raw)
    with pytest.raises(OCTInputError, match=r"cube 0x128.img: geometry 0x128 from the file name .* no A-scans"):
        load_oct(z)


def _e2e_expected(exponents):
    """E2E pixels are an unsigned float16 (6-bit exponent, 10-bit mantissa; mantissa 0 here: 2**(e - 63)) shown
    through Heidelberg's display transform clip((log(v + 2.44e-4) + 8.3) / 8.285, 0, 1)."""
    v = np.float_power(2.0, exponents.astype(np.float64) - 63)
    return np.clip((np.log(v + 2.44e-4) + 8.3) / 8.285, 0, 1)


def write_e2e(path, volumes, lateralities, scaley=0.0039):
    """A Heidelberg E2E file: header, main directory, one directory of entries, then the chunks it points to
    (per volume a preamble with laterality and one image chunk per B-scan; one B-scan metadata chunk)."""
    from oct_converter.readers.binary_structs import e2e_binary as e

    chunks = []  # (patient, study, series, slice_id, ind, type, payload)
    bmeta = {s.name: 0 for s in e.bscan_metadata.subcons}
    bmeta.update(unknown4=[0.0, 0.0], scaley=scaley)
    for k, (vol, lat) in enumerate(zip(volumes, lateralities)):
        series = k + 1
        chunks.append((1, 1, series, 0, 0, 3, e.pre_data.build(dict(unknown=0, laterality=lat)) + b"\0" * 11))
        if k == 0:
            chunks.append((1, 1, series, 0, 0, 10004, e.bscan_metadata.build(bmeta)))
        for i, bscan in enumerate(vol):
            h, w = bscan.shape
            img = e.image_structure.build(dict(size=bscan.nbytes, type=0, unknown=0, height=h, width=w))
            chunks.append((1, 1, series, 2 * i, 1, 1073741824, img + np.ascontiguousarray(bscan, "<u2").tobytes()))
    head = e.header_structure.build(dict(magic1="CMDb", version=100, unknown=[0] * 10))
    dir_at = len(head) + 52
    main = e.main_directory_structure.build(dict(magic2="MDbMDir", version=100, unknown=[0] * 10,
                                                 num_entries=0, current=dir_at, prev=0, unknown3=0))
    body_at = dir_at + 52 + 44 * len(chunks)
    entries, body = b"", b""
    for pat, study, series, sl, ind, typ, payload in chunks:
        start = body_at + len(body)
        entries += e.sub_directory_structure.build(dict(
            pos=0, start=start, size=len(payload), unknown=0, patient_db_id=pat, study_id=study, series_id=series,
            slice_id=sl, unknown2=0, unknown3=0, type=typ, unknown4=0))
        body += e.chunk_structure.build(dict(
            magic3="MDbData", unknown=0, unknown2=0, pos=start, size=len(payload), unknown3=0, patient_db_id=pat,
            study_id=study, series_id=series, slice_id=sl, ind=ind, unknown4=0, type=typ, unknown5=0)) + payload
    directory = e.main_directory_structure.build(dict(magic2="MDbDir", version=100, unknown=[0] * 10,
                                                      num_entries=len(chunks), current=dir_at, prev=0, unknown3=0))
    path.write_bytes(head + main + directory + entries + body)
    return path


def test_e2e_every_volume_and_suffixless_detection(tmp_path, caplog):
    rng = np.random.default_rng(5)
    exps = [rng.integers(50, 64, size=(3, 12, 10)), rng.integers(50, 64, size=(4, 12, 8))]
    p = write_e2e(tmp_path / "exam.e2e", [(x << 10).astype(np.uint16) for x in exps], ["R", "L"])
    with caplog.at_level("WARNING", logger="oct_foundation.data.vendor"):
        x = load_oct(p)
    assert "holds 2 OCT volumes" in caplog.text
    assert x.meta["format"] == "e2e" and x.meta["n_volumes"] == 2 and x.meta["volume_index"] == 0
    assert [v["laterality"] for v in x.meta["volumes"]] == ["R", "L"]
    assert [v["n_bscans"] for v in x.meta["volumes"]] == [3, 4]
    np.testing.assert_allclose(x[0].numpy(), _e2e_expected(exps[0]), rtol=1e-5, atol=1e-6)
    assert x.meta["laterality"] == "R"
    np.testing.assert_allclose(x.meta["spacing"][1], 0.0039, rtol=1e-6)
    assert "not decoded" in x.meta["spacing_source"]
    r = HeidelbergE2EReader(volume_index=1, lateral_mm=0.011, slice_mm=0.12)
    y = load_oct(p, r)
    np.testing.assert_allclose(y[0].numpy(), _e2e_expected(exps[1]), rtol=1e-5, atol=1e-6)
    assert y.meta["laterality"] == "L" and tuple(y.shape) == (1, 4, 12, 8)
    np.testing.assert_allclose(y.meta["spacing"], (0.12, 0.0039, 0.011), rtol=1e-6)
    # a suffix-less E2E goes to the E2E reader (by its CMDb magic), not the .vol parser
    bare = tmp_path / "exam_export"
    bare.write_bytes(p.read_bytes())
    z = load_oct(bare, OCTVolumeReader())
    assert z.meta["format"] == "e2e" and z.meta["n_volumes"] == 2
    np.testing.assert_array_equal(z.numpy(), x.numpy())
    with pytest.raises(OCTInputError, match=r"exam.e2e: volume_index 2 out of range: the file holds 2"):
        load_oct(p, HeidelbergE2EReader(volume_index=2))


def test_topcon_fda_jpeg_bscans(tmp_path):
    """``.fda`` with ``@IMG_JPEG``: per B-scan an int32 byte count and a JPEG image [H, W]."""
    import io

    from oct_converter.readers.binary_structs import fda_binary as b
    from PIL import Image

    vol = np.random.default_rng(2).integers(60, 200, size=(D, H, W)).astype(np.uint8)
    jpegs = []
    for s in vol:
        buf = io.BytesIO()
        Image.fromarray(s).save(buf, format="JPEG", quality=95)
        jpegs.append(buf.getvalue())
    payload = b.oct_header.build(dict(scan_mode=2, unknown1=0, unknown2=0, width=W, height=H, number_slices=D,
                                      unknown3=0))
    payload += b"".join(struct.pack("<i", len(j)) + j for j in jpegs)
    out = b.header.build(dict(file_code="FOCT", file_type="FDA", major_ver=8, minor_ver=3))
    out += _chunk(b"@CAPTURE_INFO_02", b.capture_info_02_header.build(dict(
        eye=0, scan_mode=2, session_id=1, label="3D", cap_date=[2024, 5, 6, 7, 8, 9])))
    out += _chunk(b"@PARAM_SCAN_04", b.param_scan_04_header.build(dict(
        fixation=0, mirror_pos=0, polar=0, x_dimension_mm=6.0, y_dimension_mm=6.0, z_resolution_um=2.6,
        comp_eff_2=0.0, comp_eff_3=0.0, base_pos=0, used_calib_data=0)))
    out += _chunk(b"@IMG_JPEG", payload) + b"\x00"
    p = tmp_path / "jpeg.fda"
    p.write_bytes(out)
    x = load_oct(p)
    decoded = np.stack([np.asarray(Image.open(io.BytesIO(j))) for j in jpegs]).astype(np.float32)
    np.testing.assert_array_equal(x[0].numpy(), decoded)
    assert np.abs(decoded - vol).max() < 40  # the JPEG B-scans are the volume, lossily
    assert x.meta["topcon_chunk"] == "@IMG_JPEG" and x.meta["laterality"] == "R"
    np.testing.assert_allclose(x.meta["spacing"], (6.0 / D, 2.6e-3, 6.0 / W), rtol=1e-6)


def _field(key: str, value: bytes) -> bytes:
    k = key.encode()
    return struct.pack("<I", len(k)) + k + struct.pack("<I", len(value)) + value


def write_bioptigen(path, vols):
    """A Bioptigen .OCT file (key/length/value header fields, then per frame a header and uint16
    [A-scans, depth]); ``vols [F, S, H, W]``: F volumes of S B-scans, stored volume-major."""
    f, s, h, w = vols.shape
    i32, f64 = (lambda v: struct.pack("<I", v)), (lambda v: struct.pack("<d", v))
    out = struct.pack("<IH", 0x0123, 0x1)
    out += _field("FRAMEHEADER", b"")  # a key with a zero-length value: just the key and its length
    for key, val in [("FRAMECOUNT", i32(f * s)), ("LINECOUNT", i32(w)), ("LINELENGTH", i32(h)),
                     ("SAMPLEFORMAT", i32(2)), ("DESCRIPTION", b"test"), ("XMIN", f64(0)), ("XMAX", f64(3)),
                     ("XCAPTION", b"mm"), ("YMIN", f64(0)), ("YMAX", f64(2)), ("YCAPTION", b"mm"),
                     ("SCANTYPE", i32(1)), ("SCANDEPTH", f64(2)), ("SCANLENGTH", f64(3)), ("AZSCANLENGTH", f64(3)),
                     ("ELSCANLENGTH", f64(3)), ("OBJECTDISTANCE", f64(0)), ("SCANANGLE", f64(0)),
                     ("SCANS", i32(s)), ("FRAMES", i32(f)), ("DOPPLERFLAG", i32(0)), ("CONFIG", b"\0" * 4)]:
        out += _field(key, val)
    out += i32(0)
    date = struct.pack("<8H", 2024, 5, 1, 6, 7, 8, 9, 0)
    for t in range(f):
        for z in range(s):
            out += struct.pack("<I", 9) + b"FRAMEDATA" + i32(0)
            out += _field("FRAMEDATETIME", date) + _field("FRAMETIMESTAMP", f64(0.0)) + _field("FRAMELINES", i32(w))
            out += _field("FRAMESAMPLES", np.ascontiguousarray(vols[t, z].T, "<u2").tobytes()) + i32(0)
    path.write_bytes(out)
    return path


def test_bioptigen_volumes_and_errors(tmp_path):
    from oct_foundation.data.vendor import BioptigenOCTReader

    vols = np.random.default_rng(4).integers(0, 65535, size=(2, 3, H, W)).astype(np.uint16)
    p = write_bioptigen(tmp_path / "eye_OD.OCT", vols)
    x = load_oct(p)
    assert x.meta["format"] == "bioptigen" and x.meta["n_volumes"] == 2 and x.meta["scan_type"] == "rect"
    assert x.meta["laterality"] == "R" and "not decoded" in x.meta["spacing_source"]
    np.testing.assert_array_equal(x[0].numpy(), vols[0].astype(np.float32))
    y = load_oct(p, BioptigenOCTReader(volume_index=1, spacing=(0.05, 0.002, 0.01)))
    np.testing.assert_array_equal(y[0].numpy(), vols[1].astype(np.float32))
    np.testing.assert_allclose(y.meta["spacing"], (0.05, 0.002, 0.01))
    cut = tmp_path / "cut.oct"
    cut.write_bytes(p.read_bytes()[:-500])
    with pytest.raises(OCTInputError, match=r"cut.oct: .*truncated"):
        load_oct(cut)
    other = tmp_path / "optovue.oct"
    other.write_bytes(b"\xff" * 400)
    with pytest.raises(OCTInputError, match=r"optovue.oct: (not a Bioptigen|cannot read Bioptigen)"):
        load_oct(other)


def _optovue_pair(folder, volumes, eye="OD"):
    """An Optovue .OCT (raw float32 B-scans [A-scans, depth], volume after volume) and its .txt file spec, in
    the layout oct-converter's POCT parses; returns the .OCT path and the expected [D, H, W] arrays."""
    rng = np.random.default_rng(3)
    lines, raw, expected = [], [], []
    for height, length, number in volumes:
        lines += [f"Window Height = {height}", f"Scan Length = {length}", f"Scan Usage = {number}"]
        stored = rng.random((number, length, height)).astype(np.float32)
        raw.append(stored.tobytes())
        expected.append(np.stack([np.rot90(b) for b in stored]))
    lines.append(f"Eye Scanned = {eye}")
    path = folder / "scan_1.OCT"
    path.write_bytes(b"".join(raw))
    (folder / "scan_1.txt").write_text("\n".join(lines) + "\n", encoding="iso-8859-1")
    return path, expected


def test_optovue_every_volume_at_its_own_offset(tmp_path):
    from oct_foundation.data.vendor import OptovueOCTReader

    path, expected = _optovue_pair(tmp_path, [(12, 10, 3), (8, 6, 2)])
    img = load_oct(str(path))  # .OCT with a .txt beside it: Optovue, not Bioptigen
    assert img.shape == (1, 3, 12, 10) and np.array_equal(img[0].numpy(), expected[0])
    second = OptovueOCTReader(volume_index=1, spacing=(0.1, 0.003, 0.02)).read(str(path))
    assert np.array_equal(second.array[0], expected[1]) and second.spacing == (0.1, 0.003, 0.02)
    assert second.extra["n_volumes"] == 2 and second.extra["laterality"] == "R"
    with pytest.raises(OCTInputError, match="volume_index 2 out of range"):
        OptovueOCTReader(volume_index=2).read(str(path))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(OCTInputError, match="scan_1.OCT.*truncated"):
        load_oct(str(path))
    (tmp_path / "scan_1.txt").unlink()  # without its spec the file goes to the Bioptigen reader, which says why
    with pytest.raises(OCTInputError, match="Bioptigen .OCT.*Optovue .OCT needs its .txt"):
        load_oct(str(path))
