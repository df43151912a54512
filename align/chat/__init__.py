"""``align chat``: a multi-turn terminal chat with a model directory (:mod:`align.chat.run`),
over a history that :mod:`align.chat.session` keeps and truncates to the context."""
