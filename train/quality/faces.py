"""Face models of the identity score: an OpenCV detector and an ONNX embedder (onnxruntime).

``face/`` of the scorer folder holds (docs/quality.md, "Face models"):

    detector.onnx   YuNet (OpenCV zoo's face_detection_yunet_2023mar.onnx, MIT), run by
                    cv2.FaceDetectorYN: boxes + 5 landmarks -> aligned 112x112 crops; or
    detector.xml    an OpenCV cascade (haarcascade_frontalface_default.xml from cv2.data):
                    boxes only -> the box, squared, resized to 112x112 (coarser)
    embedder.onnx   112x112 aligned RGB face in (N, 3, 112, 112), one embedding out:
                    OpenCV zoo's face_recognition_sface_2021dec.onnx (Apache-2.0) or an
                    ArcFace-style model (then set its pixel normalisation in face.json)
    face.json       optional: {"detector": file, "embedder": file, "embedder_mean": 0.0,
                    "embedder_std": 1.0, "min_face_score": 0.7}

Detection and alignment are OpenCV's (FaceDetectorYN, estimateAffinePartial2D, warpAffine)
and the embedding is onnxruntime's; this module only wires them. Both run on the CPU: a few
112x112 crops per task cost milliseconds and never touch the GPU the LoRA trains on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The 112x112 ArcFace landmark template (eyes, nose tip, mouth corners) that SFace's
# alignCrop and InsightFace's norm_crop both warp to.
TEMPLATE = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041))
CROP = 112
DETECT_SIDE = 640      # images are detected at most this large (phone photos are 4000 px)
YUNET_OUTPUTS = tuple(f"{h}_{s}" for h in ("cls", "obj", "bbox", "kps") for s in (8, 16, 32))
FACE_JSON_KEYS = ("detector", "embedder", "embedder_mean", "embedder_std", "min_face_score")


class FaceFolderError(ValueError):
    """face/ does not hold what docs/quality.md says it must (message names the file)."""


@dataclass(frozen=True)
class FaceLayout:
    detector: Path
    embedder: Path
    mean: float = 0.0           # SFace takes raw 0-255 RGB; ArcFace (x - 127.5) / 127.5
    std: float = 1.0
    min_score: float = 0.7

    @property
    def kind(self) -> str:
        return "yunet" if self.detector.suffix == ".onnx" else "cascade"


def read_layout(folder: Path) -> FaceLayout:
    """The files of ``folder`` (face/) as docs/quality.md lists them; FaceFolderError if not."""
    options: dict[str, Any] = {}
    if (folder / "face.json").is_file():
        try:
            options = json.loads((folder / "face.json").read_text())
        except (OSError, ValueError) as exc:
            raise FaceFolderError(f"face/face.json is not readable JSON ({exc})") from None
        if not isinstance(options, dict) or set(options) - set(FACE_JSON_KEYS):
            raise FaceFolderError(f"face/face.json must be an object with keys among {', '.join(FACE_JSON_KEYS)}")
    detector = _one(folder, options.get("detector"), ("detector.onnx", "detector.xml"), "detector")
    embedder = _one(folder, options.get("embedder"), ("embedder.onnx",), "embedder")
    if detector.suffix not in (".onnx", ".xml") or embedder.suffix != ".onnx":
        raise FaceFolderError("face/: the detector is a .onnx (YuNet) or .xml (OpenCV cascade) file and the "
                              "embedder a .onnx file")
    try:
        numbers = {k: float(options[k]) for k in ("embedder_mean", "embedder_std", "min_face_score") if k in options}
    except (TypeError, ValueError):
        raise FaceFolderError("face/face.json: embedder_mean, embedder_std and min_face_score are numbers") from None
    return FaceLayout(detector, embedder, numbers.get("embedder_mean", 0.0), numbers.get("embedder_std", 1.0) or 1.0,
                      numbers.get("min_face_score", 0.7))


def _one(folder: Path, named: Any, defaults: tuple[str, ...], what: str) -> Path:
    names = (str(named),) if named else defaults
    for name in names:
        path = (folder / name)
        if path.is_file() and path.resolve().parent == folder.resolve():
            return path
    raise FaceFolderError(f"face/ has no {what} file ({' or '.join(names)})")


def check_models(layout: FaceLayout) -> None:
    """Open both models and check their shapes, without running them (FaceFolderError if wrong)."""
    import onnxruntime as ort

    try:
        embedder = ort.InferenceSession(str(layout.embedder), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise FaceFolderError(f"face/{layout.embedder.name} is not an ONNX model onnxruntime can run ({exc})") from None
    inputs, outputs = embedder.get_inputs(), embedder.get_outputs()
    shape = list(inputs[0].shape) if len(inputs) == 1 else []
    if (len(shape) != 4 or shape[1] != 3 or any(isinstance(d, int) and d != CROP for d in shape[2:])
            or len(outputs) != 1):
        raise FaceFolderError(f"face/{layout.embedder.name} takes {[i.shape for i in inputs]} and gives "
                              f"{len(outputs)} output(s); a face embedder takes one (N, 3, 112, 112) image and "
                              f"gives one embedding (SFace / ArcFace)")
    if layout.kind == "yunet":
        try:
            names = {o.name for o in ort.InferenceSession(str(layout.detector),
                                                          providers=["CPUExecutionProvider"]).get_outputs()}
        except Exception as exc:
            raise FaceFolderError(f"face/{layout.detector.name} is not an ONNX model ({exc})") from None
        missing = [n for n in YUNET_OUTPUTS if n not in names]
        if missing:
            raise FaceFolderError(f"face/{layout.detector.name} is not a YuNet detector (outputs {sorted(names)}; "
                                  f"cv2.FaceDetectorYN reads {', '.join(YUNET_OUTPUTS)})")
    else:
        import cv2

        if cv2.CascadeClassifier(str(layout.detector)).empty():
            raise FaceFolderError(f"face/{layout.detector.name} is not an OpenCV cascade classifier")


@dataclass
class Face:
    box: tuple[float, float, float, float]      # x, y, w, h in the image's pixels
    score: float
    landmarks: Any = None                        # (5, 2) float array (YuNet) or None (cascade)


class FaceModels:
    """Detect faces in an RGB uint8 array and embed the aligned crops (L2-normalised)."""

    def __init__(self, layout: FaceLayout):
        import cv2
        import onnxruntime as ort

        self.layout = layout
        self.session = ort.InferenceSession(str(layout.embedder), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        if layout.kind == "yunet":
            self.detector = cv2.FaceDetectorYN.create(str(layout.detector), "", (320, 320), layout.min_score, 0.3, 50)
        else:
            self.detector = cv2.CascadeClassifier(str(layout.detector))

    def detect(self, rgb) -> list[Face]:
        """Faces of ``rgb`` (H, W, 3 uint8), largest first."""
        import cv2

        scale = min(1.0, DETECT_SIDE / max(rgb.shape[:2]))
        small = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else rgb
        bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
        if self.layout.kind == "yunet":
            self.detector.setInputSize((bgr.shape[1], bgr.shape[0]))
            _, rows = self.detector.detect(bgr)
            faces = [Face(tuple(r[:4] / scale), float(r[14]), (r[4:14].reshape(5, 2) / scale)) for r in
                     (rows if rows is not None else [])]
        else:
            gray = cv2.equalizeHist(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
            boxes = self.detector.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
            faces = [Face(tuple(float(v) / scale for v in b), 1.0) for b in boxes]
        return sorted(faces, key=lambda f: f.box[2] * f.box[3], reverse=True)

    def align(self, rgb, face: Face):
        """The 112x112 crop the embedder expects: warped onto the landmark template when the
        detector gives landmarks, else the box squared (10 % margin) and resized."""
        import cv2
        import numpy as np

        if face.landmarks is not None:
            matrix, _ = cv2.estimateAffinePartial2D(np.asarray(face.landmarks, np.float32),
                                                    np.asarray(TEMPLATE, np.float32), method=cv2.LMEDS)
            if matrix is not None:
                return cv2.warpAffine(rgb, matrix, (CROP, CROP), flags=cv2.INTER_LINEAR)
        x, y, w, h = face.box
        side = max(w, h) * 1.1
        cx, cy = x + w / 2, y + h / 2
        src = np.float32([[cx - side / 2, cy - side / 2], [cx + side / 2, cy - side / 2], [cx - side / 2, cy + side / 2]])
        dst = np.float32([[0, 0], [CROP, 0], [0, CROP]])
        return cv2.warpAffine(rgb, cv2.getAffineTransform(src, dst), (CROP, CROP), flags=cv2.INTER_LINEAR)

    def embed(self, crops: list) -> Any:
        """(N, D) L2-normalised embeddings of aligned RGB crops."""
        import numpy as np

        batch = (np.stack(crops).astype(np.float32).transpose(0, 3, 1, 2) - self.layout.mean) / self.layout.std
        out = np.asarray(self.session.run(None, {self.input_name: batch})[0], dtype=np.float64).reshape(len(crops), -1)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def largest_face_embedding(self, rgb) -> tuple[int, Any]:
        """(faces found, embedding of the largest face or None)."""
        faces = self.detect(rgb)
        if not faces:
            return 0, None
        return len(faces), self.embed([self.align(rgb, faces[0])])[0]

    def info(self) -> dict[str, Any]:
        from train.fingerprint import sha256_file

        return {"detector": self.layout.detector.name, "detector_kind": self.layout.kind,
                "detector_sha256": sha256_file(self.layout.detector)[:16],
                "embedder": self.layout.embedder.name, "embedder_sha256": sha256_file(self.layout.embedder)[:16],
                "embedder_mean": self.layout.mean, "embedder_std": self.layout.std}
