"""``python -m voiceid_clients``: list the clients."""

from __future__ import annotations

print(
    "voiceid clients:\n"
    "  python -m voiceid_clients.stream FILE        stream audio, print events (WebSocket)\n"
    "  python -m voiceid_clients.enroll NAME FILE.. enroll a person (REST)\n"
    "  python -m voiceid_clients.listen_mqtt        print events from MQTT\n"
    "each takes --help"
)
