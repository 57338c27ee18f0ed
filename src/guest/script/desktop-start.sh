#!/bin/sh
# Starts the VNC server, on the guest's localhost only, and runs the desktop session
# on it, again whenever the session ends (diskforge).
set -u
# The session user's home and names, whichever init started this (OpenRC's
# supervise-daemon does not set them as systemd's User= does).
HOME=$(getent passwd "$(id -u)" | cut -d: -f6)
USER=$(id -un)
LOGNAME=$USER
export HOME USER LOGNAME
cd "$HOME" 2>/dev/null || cd /
D=:1
# A lock left by a server that did not stop cleanly would keep this one from starting.
if [ -e /tmp/.X1-lock ] && ! kill -0 "$(tr -dc 0-9 < /tmp/.X1-lock)" 2>/dev/null; then
  rm -f /tmp/.X1-lock /tmp/.X11-unix/X1
fi
Xtigervnc "$D" -localhost -rfbport @VNC_PORT@ -SecurityTypes VncAuth \
  -PasswordFile @PASSWD@ -geometry @GEOMETRY@ -depth 24 -desktop @NAME@ &
x=$!
i=0
while [ ! -S /tmp/.X11-unix/X1 ]; do
  kill -0 "$x" 2>/dev/null || { echo "Xtigervnc exited" >&2; exit 1; }
  i=$((i + 1)); [ "$i" -lt 600 ] || { echo "Xtigervnc did not start" >&2; kill "$x"; exit 1; }
  sleep 0.2
done
export DISPLAY="$D"
while kill -0 "$x" 2>/dev/null; do
  @SESSION@
  sleep 1
done
