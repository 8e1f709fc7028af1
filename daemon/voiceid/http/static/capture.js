// AudioWorklet: hands the microphone's samples (mono, the context's rate) to the page
// in blocks of 2048 frames. Loaded by app.js with audioWorklet.addModule().
class VoiceidCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = new Float32Array(2048);
    this.n = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (input && input.length > 0) {
      const channels = input.length;
      const frames = input[0].length;
      for (let i = 0; i < frames; i++) {
        let v = 0;
        for (let c = 0; c < channels; c++) v += input[c][i];
        this.block[this.n++] = v / channels;
        if (this.n === this.block.length) {
          this.port.postMessage(this.block, [this.block.buffer]);
          this.block = new Float32Array(2048);
          this.n = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor("voiceid-capture", VoiceidCapture);
