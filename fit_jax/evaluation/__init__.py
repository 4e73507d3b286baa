"""The paper's evaluation: verification on LFW pairs with independent judges,
recovery quality, baselines and their deanonymizers."""
