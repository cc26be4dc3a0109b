#!/usr/bin/env bash
# Makes the small audio fixtures of mm-data's decoder tests (committed; run again only to
# change them). Needs SoX with its format plug-ins (Debian: apt-get install sox libsox-fmt-all).
# Each holds the same 0.25 s signal: a 440 Hz tone at half scale, 16 kHz, stereo where stated.
set -euo pipefail
cd "$(dirname "$0")"
sox -n -r 16000 -c 1 -b 16 tone440.flac synth 0.25 sine 440 vol 0.5
sox -n -r 16000 -c 2 -b 16 tone440_stereo.flac synth 0.25 sine 440 vol 0.5
sox -n -r 16000 -c 1 -C 64 tone440.mp3 synth 0.25 sine 440 vol 0.5
sox -n -r 16000 -c 1 -C 3 tone440.ogg synth 0.25 sine 440 vol 0.5
