"""Realistic, deterministic names for users, bots, guilds, channels, roles and messages.

Display names mix Latin with accents, emoji, CJK, Cyrillic and Arabic scripts, because the ingest and
the front end must carry any Unicode a real server has. Account names (usernames) follow Discord's
current rules: 2-32 characters of lowercase a-z, 0-9, ``_`` and ``.``.
"""

from __future__ import annotations

import random
import unicodedata

FIRST_NAMES = (
    "Alice",
    "Bruno",
    "Chloé",
    "Dmitri",
    "Élodie",
    "Fatima",
    "Gustavo",
    "Hana",
    "Ingrid",
    "José",
    "Kai",
    "Léa",
    "Mateo",
    "Noémie",
    "Oskar",
    "Priya",
    "Quentin",
    "Renée",
    "Søren",
    "Tomás",
    "Uma",
    "Valentina",
    "Wei",
    "Ximena",
    "Yusuf",
    "Zoë",
    "Björn",
    "François",
    "Małgorzata",
    "Jürgen",
    "Ana",
    "Ben",
    "Carla",
    "Diego",
    "Emma",
    "Felix",
    "Grace",
    "Hugo",
    "Isla",
    "Jack",
    "Liam",
    "Mia",
    "Noah",
    "Olivia",
    "Paul",
    "Rosa",
    "Sam",
    "Tara",
    "Victor",
    "Will",
    "さくら",
    "はると",
    "李伟",
    "王芳",
    "山田",
    "김민준",
    "이서연",
    "Алексей",
    "Мария",
    "محمد",
)
LAST_NAMES = (
    "García",
    "Müller",
    "Nguyễn",
    "Kowalski",
    "Smith",
    "Rossi",
    "Dubois",
    "Silva",
    "Tanaka",
    "Kim",
    "Novák",
    "Andersson",
    "O'Brien",
    "Petrov",
    "Yılmaz",  # noqa: RUF001 (a real Turkish name)
    "Haddad",
    "Jensen",
    "López",
    "Chen",
    "Singh",
)
HANDLE_WORDS = (
    "pixel",
    "shadow",
    "nova",
    "byte",
    "ember",
    "frost",
    "lunar",
    "quartz",
    "echo",
    "zephyr",
    "comet",
    "maple",
    "otter",
    "raven",
    "sakura",
    "tofu",
    "mochi",
    "neon",
    "glitch",
    "koi",
    "storm",
    "vortex",
    "panda",
    "taco",
    "wolf",
    "fox",
    "owl",
    "bear",
    "cactus",
    "noodle",
    "waffle",
    "rocket",
)
EMOJI = ("✨", "🐱", "🔥", "🌸", "🎮", "🍕", "🌙", "⚡", "🦊", "💜", "🎧", "🐸", "☕", "🌈")
BOT_NAMES = (
    "MEE6",
    "Dyno",
    "Carl-bot",
    "Pokétwo",
    "Dank Memer",
    "Ticket Tool",
    "Statbot",
    "Hydra",
    "Jockie Music",
    "Mudae",
    "YAGPDB",
    "Arcane",
    "Sesh",
    "Tatsu",
    "Owo",
    "Groovy",
)
GUILD_NAMES = (
    "Café Polyglotte",
    "Pixel Art Guild",
    "The Study Hall 📚",
    "日本語 学習",
    "Rust Programmers",
    "Indie Game Devs",
    "Lo-fi Lounge 🎧",
    "Speedrun Central",
    "Board Game Night",
    "Cozy Gamers ✨",
    "Open Source Café",
    "Astronomy Club 🔭",
    "Книжный клуб",
    "Café Crème",
    "Retro Computing",
    "Photography Hub",
    "Minecraft Builders",
    "Language Exchange 🌍",
    "Homelab",
    "Music Theory",
)
CHANNEL_NAMES = (
    "general",
    "random",
    "memes",
    "off-topic",
    "help",
    "showcase",
    "music",
    "gaming",
    "introductions",
    "announcements",
    "dev",
    "art",
    "pets",
    "food",
    "bot-commands",
)
ROLE_NAMES = (
    "Admin",
    "Moderator",
    "Helper",
    "VIP",
    "Booster",
    "Artist",
    "Developer",
    "Veteran",
    "Member",
    "Newcomer",
    "Event Team",
    "DJ",
    "Streamer",
    "Translator",
    "Café Regular",
)
ROLE_COLORS = (
    0xE74C3C,
    0xE67E22,
    0xF1C40F,
    0x2ECC71,
    0x1ABC9C,
    0x3498DB,
    0x9B59B6,
    0xE91E63,
    0x11806A,
    0x206694,
    0x71368A,
    0xAD1457,
    0xC27C0E,
    0xA84300,
    0x992D22,
    0x95A5A6,
)
MESSAGE_TEXTS = (
    "hello everyone!",
    "gm ☕",
    "anyone up for a game tonight?",
    "lol",
    "that's amazing 🔥",
    "¿alguien habla español?",
    "ça va ?",
    "おはようございます",
    "有人在吗？",  # noqa: RUF001 (real Chinese punctuation)
    "brb",
    "check out my new build ✨",
    "how do I fix this error?",
    "thanks!! 💜",
    "+1",
    "the meeting is at 8pm UTC",
    "Привет всем",
    "nice 👍",
    "who's streaming later?",
    "I just finished the book, no spoilers please",
    "new emoji when?",
)


def ascii_fold(text: str) -> str:
    """Lowercase ASCII letters and digits only ("Chloé" -> "chloe"); empty for scripts without them."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed.lower() if ch.isascii() and ch.isalnum())


class NameMaker:
    """Draws names from a seeded RNG and keeps usernames unique, as Discord does."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._taken: set[str] = set()

    def _unique(self, base: str) -> str:
        base = base[:28] or "user"
        if len(base) < 2:
            base += "_x"
        name = base
        while name in self._taken:
            name = f"{base}{self._rng.randrange(10, 10_000)}"[:32]
        self._taken.add(name)
        return name

    def human(self) -> tuple[str, str | None]:
        """(username, global_name) of a person; about one in six has no global name."""
        rng = self._rng
        first = rng.choice(FIRST_NAMES)
        folded = ascii_fold(first)
        stem = folded if len(folded) >= 2 else rng.choice(HANDLE_WORDS)
        style = rng.random()
        if style < 0.4:
            username = self._unique(f"{stem}{rng.choice(('', '_', '.'))}{rng.choice(HANDLE_WORDS)}")
        elif style < 0.8:
            username = self._unique(f"{stem}{rng.randrange(1, 9999)}")
        else:
            username = self._unique(f"{rng.choice(HANDLE_WORDS)}_{rng.choice(HANDLE_WORDS)}")
        shape = rng.random()
        global_name: str | None
        if shape < 0.16:
            global_name = None
        elif shape < 0.55:
            global_name = first
        elif shape < 0.75:
            global_name = f"{first} {rng.choice(LAST_NAMES)}"
        elif shape < 0.92:
            global_name = f"{first} {rng.choice(EMOJI)}"
        else:
            global_name = f"{rng.choice(EMOJI)} {first.lower()} {rng.choice(EMOJI)}"
        return username, global_name

    def bot(self) -> str:
        base = ascii_fold(self._rng.choice(BOT_NAMES)) or "bot"
        return self._unique(base)

    def nick(self) -> str:
        rng = self._rng
        return rng.choice(
            (
                f"{rng.choice(FIRST_NAMES)} | {rng.choice(ROLE_NAMES)}",
                f"{rng.choice(EMOJI)} {rng.choice(HANDLE_WORDS).capitalize()}",
                rng.choice(FIRST_NAMES),
            )
        )

    def message(self) -> str:
        return self._rng.choice(MESSAGE_TEXTS)
