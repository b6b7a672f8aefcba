#!/usr/bin/env python3
"""Build the fbank parity fixture: tests/fixtures/fbank_{a,b,c}_16k.wav, fbank_b_22k.wav and
tests/fixtures/fbank_parity.h5.

The wavs are real synthetic speech: espeak-ng (voice en-us with variants) writes 22.05 kHz 16-bit mono,
sox (-D: no dither, default `rate` quality) converts to 16 kHz 16-bit. The C++ test reads the 16 kHz
wavs with data_pipeline/audio.h and computes data_pipeline/fbank.h; the reference here reads the same
int16 samples (python's wave module, so no torchaudio I/O backend is needed) and calls
torchaudio.compliance.kaldi.fbank(int16 values as float32, dither=0, ...). kaldi-native-fbank, an
independent implementation, is run as a cross-check of the reference (its max difference from
torchaudio is stored as an attribute).

Float32 noise (measured with torch 2.15 / torchaudio 2.11.1 / kaldi-native-fbank 1.23.0): torchaudio's
float32 features differ from the same code run in float64 by up to 1.85e-3 (wav b), and
kaldi-native-fbank differs from torchaudio by up to 4.2e-3 (wav c). The large differences are all in
cells whose mel energy is ~e^-24 of the frame's total: float32 rounding (in the time-domain steps and
the FFT) has a noise floor ~ FLT_EPSILON * sqrt(frame energy / cell energy) in the log domain there.
Within 14 nats of the frame total, torchaudio32 and torchaudio64 agree to < 5e-4. The C++ test
therefore asserts 1e-3 on cells within 20 nats of their frame, and 1e-3 + FLT_EPSILON * exp(gap / 2)
on the rest. Two runs give byte-identical files.

fbank_b_22k.wav is espeak's native 22.05 kHz output of utterance b: the C++ test resamples it with
libsamplerate and compares with the fbank of the sox-resampled fbank_b_16k.wav (loose bound; two
different resamplers).

HDF5 layout (float32, gzip):
  /                 attrs: fixture_version, generator, torchaudio_version, knf_max_abs_diff
  /<case>           attrs: wav (file name in tests/fixtures), config (JSON of torchaudio kwargs, as
                    FbankConfig serialises them)
  /<case>/fbank     f32 [num_frames, num_mel_bins (+1 with use_energy)]
  /<case>/fbank64   f32, case b only: the same torchaudio function run in float64 (rounded to
                    float32 when stored), i.e. the features without float32 computation noise
Cases: a, b, c (WeNet settings: 80 bins, povey, dither 0, energy_floor 0), and on wav b: b_variant1
(snip_edges false, hamming, 40 bins, 40 Hz..Nyquist-400, energy column first, raw energy,
energy_floor 1), b_variant2 (blackman, preemphasis 0.9, no power-of-two rounding, no dc removal,
23 bins, magnitude spectrum, energy after the window, last column).

Run (needs espeak-ng, sox, and torch + torchaudio + kaldi-native-fbank + h5py + numpy; torchaudio
2.11.1 was installed with --no-deps next to torch 2.15: only its pure-python compliance.kaldi is used):
  /work/venv-torch/bin/pip install --no-deps torchaudio==2.11.1 kaldi-native-fbank==1.23.0
  /work/venv-torch/bin/python tests/reference/make_fbank_fixture.py --out_dir tests/fixtures
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import wave

import h5py
import numpy as np
import torch
import torchaudio
import torchaudio.compliance.kaldi as kaldi

FIXTURE_VERSION = 1

# name -> (text, espeak voice, speed (words/min), pitch (0..99))
UTTERANCES = {
    "a": ("the quick brown fox jumps over the lazy dog", "en-us", 175, 50),
    "b": ("she sells sea shells", "en-us+f2", 165, 70),
    "c": ("how much wood would a woodchuck chuck", "en-us+m3", 185, 35),
}

WENET = dict(
    sample_frequency=16000.0, frame_length=25.0, frame_shift=10.0, num_mel_bins=80, low_freq=20.0,
    high_freq=0.0, dither=0.0, preemphasis_coefficient=0.97, remove_dc_offset=True, window_type="povey",
    blackman_coeff=0.42, round_to_power_of_two=True, snip_edges=True, energy_floor=0.0, use_energy=False,
    raw_energy=True, htk_compat=False, use_log_fbank=True, use_power=True)

VARIANTS = {
    "b_variant1": dict(WENET, snip_edges=False, window_type="hamming", num_mel_bins=40, low_freq=40.0,
                       high_freq=-400.0, use_energy=True, raw_energy=True, energy_floor=1.0,
                       htk_compat=False),
    "b_variant2": dict(WENET, window_type="blackman", round_to_power_of_two=False, remove_dc_offset=False,
                       num_mel_bins=23, use_power=False, use_energy=True, raw_energy=False,
                       htk_compat=True, preemphasis_coefficient=0.9),
}


def run(cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def read_int16_wav(path):
    with wave.open(path, "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2, path
        rate = w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return data.astype(np.float32), rate


def knf_fbank(samples, cfg):
    import kaldi_native_fbank as knf
    opts = knf.FbankOptions()
    f = opts.frame_opts
    f.samp_freq = cfg["sample_frequency"]
    f.frame_length_ms = cfg["frame_length"]
    f.frame_shift_ms = cfg["frame_shift"]
    f.dither = 0.0
    f.preemph_coeff = cfg["preemphasis_coefficient"]
    f.remove_dc_offset = cfg["remove_dc_offset"]
    f.window_type = cfg["window_type"]
    f.round_to_power_of_two = cfg["round_to_power_of_two"]
    f.blackman_coeff = cfg["blackman_coeff"]
    f.snip_edges = cfg["snip_edges"]
    m = opts.mel_opts
    m.num_bins = cfg["num_mel_bins"]
    m.low_freq = cfg["low_freq"]
    m.high_freq = cfg["high_freq"]
    opts.use_energy = cfg["use_energy"]
    opts.raw_energy = cfg["raw_energy"]
    opts.htk_compat = cfg["htk_compat"]
    opts.energy_floor = cfg["energy_floor"]
    opts.use_log_fbank = cfg["use_log_fbank"]
    opts.use_power = cfg["use_power"]
    comp = knf.OnlineFbank(opts)
    comp.accept_waveform(cfg["sample_frequency"], samples.tolist())
    comp.input_finished()
    return np.stack([comp.get_frame(i) for i in range(comp.num_frames_ready)]).astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out_dir", default="tests/fixtures")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out_dir, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        for name, (text, voice, speed, pitch) in UTTERANCES.items():
            raw = os.path.join(tmp, name + ".wav")
            run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", raw, text])
            run(["sox", "-D", raw, "-r", "16000", "-b", "16", "-c", "1",
                 os.path.join(args.out_dir, "fbank_%s_16k.wav" % name)])
            if name == "b":
                run(["sox", "-D", raw, "-r", "22050", "-b", "16", "-c", "1",
                     os.path.join(args.out_dir, "fbank_b_22k.wav")])

    cases = {name: ("fbank_%s_16k.wav" % name, WENET) for name in UTTERANCES}
    cases.update({name: ("fbank_b_16k.wav", cfg) for name, cfg in VARIANTS.items()})

    out_path = os.path.join(args.out_dir, "fbank_parity.h5")
    knf_max = 0.0
    with h5py.File(out_path, "w", libver=("earliest", "v110")) as h5:
        h5.attrs["fixture_version"] = FIXTURE_VERSION
        h5.attrs["generator"] = "tests/reference/make_fbank_fixture.py"
        h5.attrs["torchaudio_version"] = str(torchaudio.__version__)
        for name, (wav_name, cfg) in cases.items():
            samples, rate = read_int16_wav(os.path.join(args.out_dir, wav_name))
            assert rate == 16000
            feats = kaldi.fbank(torch.from_numpy(samples).unsqueeze(0), **cfg).numpy().astype(np.float32)
            ref = knf_fbank(samples, cfg)
            assert ref.shape == feats.shape, (name, ref.shape, feats.shape)
            diff = float(np.abs(ref - feats).max())
            knf_max = max(knf_max, diff)
            print("%-11s %-18s frames %4d dims %3d  |torchaudio - knf| max %.3g" %
                  (name, wav_name, feats.shape[0], feats.shape[1], diff))
            g = h5.create_group(name)
            g.create_dataset("fbank", data=feats, compression="gzip", compression_opts=9, shuffle=True)
            if name == "b":
                # The same torchaudio code in float64: the float32 rounding noise of both
                # implementations shows against it.
                feats64 = kaldi.fbank(torch.from_numpy(samples.astype(np.float64)).unsqueeze(0), **cfg).numpy()
                g.create_dataset("fbank64", data=feats64.astype(np.float32), compression="gzip",
                                 compression_opts=9, shuffle=True)
                print("%-11s |torchaudio32 - torchaudio64| max %.3g" % (name, np.abs(feats - feats64).max()))
            g.attrs["wav"] = wav_name
            g.attrs["config"] = json.dumps(cfg, sort_keys=True)
        h5.attrs["knf_max_abs_diff"] = knf_max
    assert knf_max < 1e-2, knf_max
    wav_bytes = sum(os.path.getsize(os.path.join(args.out_dir, f)) for f in os.listdir(args.out_dir)
                    if f.startswith("fbank_") and f.endswith(".wav"))
    h5_bytes = os.path.getsize(out_path)
    print("wrote %s (%d bytes); wavs %d bytes" % (out_path, h5_bytes, wav_bytes))
    if wav_bytes > 300_000 or h5_bytes > 300_000:
        sys.exit("fixture files too large")


if __name__ == "__main__":
    main()
