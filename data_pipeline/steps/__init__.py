"""One datatrove pipeline step per stage of the dots.llm1 data recipe."""
