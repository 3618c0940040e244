"""The human arena: a blind, Chatbot-Arena-style web app where raters compare two anonymous models' answers,
and the durable vote store that the `arena` asset reads."""
