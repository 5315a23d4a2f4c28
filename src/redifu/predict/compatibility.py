"""Which features a checkpoint's model can take: the extractor-compatibility policy.

A checkpoint records, per modality, the extractor that made its training features (``run.json``'s
``extractors``: ``name``, ``version``, ``dimension``, ``settings``, and for one only *reported*
by a feature file's authors, ``verified: false`` and ``reported_by``). Features for prediction
must come from the same extractor:

- a vector that declares its extractor (``<modality>_extractor``) must name the recorded one; for
  a reported extractor, redifu's own extractor of the same kind (``settings.feature_set``, e.g.
  ``IS10_paraling``) is accepted only with ``allow_unverified`` (that redifu's output matches the
  authors' is not verified);
- an undeclared vector is checked by size only;
- raw audio (``audio_path``) is described with the recorded audio extractor, recomputed by redifu
  with the recorded settings; refused when none is recorded or redifu cannot compute it;
- raw video (``video_path``) likewise with the recorded visual extractor (its face descriptor,
  frame sampling, detector and tracking settings); a TorchScript descriptor only with
  ``trust_torchscript`` and the very file recorded (same SHA-256).

A leaf of :mod:`redifu.predict`: the audio and visual extractors are imported only when raw
audio or video is read.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Mapping

from redifu.errors import CheckpointError

if TYPE_CHECKING:
    from redifu.features.audio import AudioFeatureExtractor
    from redifu.features.video import VisualFeatureExtractor

logger = logging.getLogger(__name__)

__all__ = ["audio_extractor_for", "check_recorded_extractors", "describe_extractor", "extractor_problem",
           "size_problem", "visual_extractor_for"]


def describe_extractor(recorded: Mapping[str, Any]) -> str:
    """The recorded extractor's name, with who reports it when it is not verified."""
    text = repr(recorded.get("name"))
    if recorded.get("verified") is False:
        text += f" (as reported by {recorded.get('reported_by') or 'the feature file'}, not verified)"
    return text


def extractor_problem(modality: str, declared: str, recorded: Mapping[str, Any] | None, *,
                      allow_unverified: bool = False) -> str | None:
    """Why features from the extractor named ``declared`` cannot feed a model whose training
    ``modality`` features came from ``recorded`` (``None``: they can).

    ``declared`` matches the recorded ``name``. For an extractor only reported by a feature file's
    authors (``verified: false``), redifu's own extractor of the same kind (``settings.feature_set``,
    e.g. ``IS10_paraling``) matches only with ``allow_unverified``.
    """
    if not recorded:
        return None  # nothing recorded to compare with: sizes are still checked
    if declared == recorded.get("name"):
        return None  # for a reported extractor: the very features its authors describe, from them
    alias = (recorded.get("settings") or {}).get("feature_set")
    if alias is not None and declared == alias and recorded.get("verified") is False:
        if allow_unverified:
            return None
        return (f"features from {declared!r}, but the model's training {modality} features are only reported by "
                f"{recorded.get('reported_by') or 'the feature file'} to come from {recorded.get('name')!r}: that "
                f"redifu's {declared} output matches theirs is not verified; give vectors made the way the training "
                f"features were, or pass --allow-unverified-extractor (allow_unverified=True) to use them anyway")
    return f"features from {declared!r}, but the model was trained on {modality} features from " \
           f"{describe_extractor(recorded)}"


def size_problem(modality: str, given: int, expected: int, recorded: Mapping[str, Any] | None) -> str:
    """The message for a ``modality`` vector of ``given`` values where the model takes ``expected``."""
    source = f" (from extractor {recorded['name']!r})" if recorded and recorded.get("name") else ""
    return f"{given} values, but the model takes {expected}-d {modality} features{source}"


def check_recorded_extractors(where: str, modalities: tuple[str, ...], modality_dims: Mapping[str, int],
                              recorded_modalities: tuple[str, ...] | None,
                              extractors: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse a checkpoint whose ``run.json`` contradicts its model (:class:`CheckpointError`)."""
    if recorded_modalities is not None and tuple(recorded_modalities) != tuple(modalities):
        raise CheckpointError(f"{where}: run.json records modalities {list(recorded_modalities)} but the model "
                              f"takes {list(modalities)}")
    for modality, extractor in extractors.items():
        dimension = extractor.get("dimension")
        if modality in modality_dims and dimension is not None and int(dimension) != modality_dims[modality]:
            raise CheckpointError(
                f"{where}: {modality}: the model takes {modality_dims[modality]}-d {modality} features but the "
                f"recorded extractor {extractor.get('name')!r} gives {dimension}-d")


def audio_extractor_for(recorded: Mapping[str, Any] | None, *,
                        allow_unverified: bool = False) -> "AudioFeatureExtractor":
    """redifu's audio extractor that remakes the recorded audio features.

    Raises:
        ValueError: the message says why raw audio cannot be described the way the training
            audio was (nothing recorded, a set redifu cannot compute, other settings, an
            unverified extractor without ``allow_unverified``, the audio extra missing).
    """
    if not recorded:
        raise ValueError("this model's checkpoint does not record how its audio features were made; "
                         "give 'audio_npy' vectors made the way its training features were")
    from redifu.features.audio import AUDIO_FEATURE_SETS, AudioFeatureExtractor

    feature_set = (recorded.get("settings") or {}).get("feature_set") or recorded.get("name")
    if feature_set not in AUDIO_FEATURE_SETS:
        raise ValueError(f"the model was trained on audio features from {describe_extractor(recorded)}, which "
                         f"redifu cannot compute (it computes {', '.join(AUDIO_FEATURE_SETS)}); give 'audio_npy'")
    problem = extractor_problem("audio", feature_set, recorded, allow_unverified=allow_unverified)
    if problem is not None:
        raise ValueError(f"redifu's openSMILE {problem}")
    extractor = AudioFeatureExtractor(feature_set)
    try:
        info = extractor.info
    except ImportError as error:
        raise ValueError(str(error)) from None
    if recorded.get("verified") is not False:
        _check_settings_and_version("audio", feature_set, recorded, info, ignore=("feature_set",))
    return extractor


def _check_settings_and_version(modality: str, name: str, recorded: Mapping[str, Any], info: Any, *,
                                ignore: tuple[str, ...] = ()) -> None:
    """Refuse other settings than the recorded ones (those a record leaves out are not checked);
    warn about another version."""
    ours = dict(info.settings)
    differ = {k: v for k, v in (recorded.get("settings") or {}).items() if k not in ignore and ours.get(k) != v}
    if differ:
        raise ValueError(f"the model's {modality} features were made with {differ}, but redifu {name} uses "
                         f"{({k: ours.get(k) for k in differ})}; give '{modality}_npy'")
    if recorded.get("version") and recorded["version"] != info.version:
        logger.warning("%s extractor %s is version %s, but the model was trained on features from %s",
                       modality, name, info.version, recorded["version"])


def visual_extractor_for(recorded: Mapping[str, Any] | None, *,
                         trust_torchscript: bool = False) -> "VisualFeatureExtractor":
    """redifu's visual extractor that remakes the recorded visual features from raw video.

    Raises:
        ValueError: the message says why raw video cannot be described the way the training
            video was (nothing recorded, a descriptor redifu cannot compute, such as the
            features of a converted pickle, other settings, an untrusted or changed TorchScript
            file, the video extra or the MTCNN weights missing).
    """
    if not recorded:
        raise ValueError("this model's checkpoint does not record how its visual features were made; "
                         "give 'visual_npy' vectors made the way its training features were")
    from redifu.features.descriptors import DESCRIPTORS, build_descriptor

    settings = dict(recorded.get("settings") or {})
    kind = settings.get("descriptor")
    if recorded.get("verified") is False or kind not in DESCRIPTORS:
        raise ValueError(f"the model was trained on visual features from {describe_extractor(recorded)}, which "
                         f"redifu cannot compute (it computes {', '.join(DESCRIPTORS)} descriptors of MTCNN faces); "
                         f"give 'visual_npy'")
    from redifu.features.faces import FaceDetector
    from redifu.features.video import VisualFeatureExtractor

    descriptor_keys = {"descriptor", "crop_size", "cell", "block", "orientations", "block_norm", "geometry", "path",
                       "sha256", "normalization"}
    chosen = {k: v for k, v in settings.items() if k in descriptor_keys}
    detector = {k: v for k, v in (settings.get("detector") or {}).items() if k != "detector"}
    tracking = settings.get("tracking") or {}
    try:
        descriptor = build_descriptor(chosen, trust_torchscript=trust_torchscript)
        extractor = VisualFeatureExtractor(
            descriptor, fps=settings.get("fps", 3.0), max_frames=settings.get("max_frames", 24),
            max_side=settings.get("max_side", 640), track_iou=tracking.get("iou", 0.3),
            detector=FaceDetector(**detector))
        info = extractor.info
    except ImportError as error:
        raise ValueError(str(error)) from None
    except (TypeError, ValueError) as error:
        raise ValueError(f"the model's visual extractor {describe_extractor(recorded)} cannot be rebuilt: {error}") \
            from None
    problem = extractor_problem("visual", info.name, recorded)
    if problem is not None:
        raise ValueError(f"redifu's {problem}")
    _check_settings_and_version("visual", info.name, recorded, info)
    return extractor
