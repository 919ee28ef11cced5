"""SynthFER, the built-in synthetic facial-expression videos: `render` draws them, `builder` stores
them as the TFDS dataset `synth_fer`."""
