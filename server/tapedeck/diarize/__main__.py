"""``python -m tapedeck.diarize``: check that the speaker encoder weights are installed and
intact (one line; exit status 1 if not)."""

from __future__ import annotations

from tapedeck.diarize.weights import WeightsUnavailable, default_weights_path, load_weights


def main() -> int:
    try:
        w = load_weights()
    except WeightsUnavailable as exc:
        print(f"speaker encoder weights: {exc}")
        return 1
    print(f"speaker encoder weights OK ({default_weights_path()}, {len(w)} tensors)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
