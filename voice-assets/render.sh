#!/usr/bin/env bash
# Re-render the pre-rendered demo prompts in voice-assets/tts/ (the seeds of the TTS cache).
# Keys follow src/media/tts.rs: sha256("espeak-ng\0<voice>\0<text>\0"). Needs espeak-ng and sox.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p tts
render() { # voice text
  local key
  key=$(printf '%s\0%s\0%s\0' espeak-ng "$1" "$2" | sha256sum | cut -d' ' -f1)
  printf '%s' "$2" | espeak-ng -v "$1" -s 165 -w /tmp/sb-render.wav --stdin
  sox /tmp/sb-render.wav -r 8000 -c 1 -b 16 "tts/$key.wav"
  echo "tts/$key.wav  [$1] $2"
}
render en-us+f3 "Welcome to Switchboard. This call is answered by a Twilio Studio flow, running on your own server. Goodbye."
